"""A tiny but real GRPO run on CPU, built from nothing: no hub, no downloads.

A byte-level BPE tokenizer trained here with a chat template, a Llama-style model built from a
config, a conversational prompt dataset, and a few TRL GRPO steps that write real checkpoint-N
folders. The tests, the examples and the benchmarks all build their runs with these functions.
Needs the `train` extra; every heavy import is inside a function.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

WORDS = (
    "the a cat dog bird sat ran flew on under over mat log tree red blue green big small one two "
    "three four five add plus minus equals what is how many count sum of and or not"
).split()
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def random_sentence(rng: random.Random, low: int = 3, high: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def build_tokenizer(vocab_size: int = 320, seed: int = 0) -> Any:
    """A fast byte-level BPE tokenizer trained on a local corpus, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [random_sentence(rng, 6, 16) for _ in range(2000)]
    corpus += ["<|user|>", "<|assistant|>", "<|system|>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: Any, *, hidden_size: int = 32, layers: int = 2, max_position_embeddings: int = 128,
                seed: int = 0) -> Any:
    """A Llama-style causal LM made from a config (random weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def build_prompt_rows(count: int = 64, seed: int = 0, low: int = 3, high: int = 12) -> list[dict]:
    """Conversational prompts, one user turn each, with a stable `id`."""
    rng = random.Random(seed)
    return [
        {"id": index, "prompt": [{"role": "user", "content": random_sentence(rng, low, high)}]}
        for index in range(count)
    ]


def length_reward(completions: list, **_: Any) -> list[float]:
    """Prefer completions of about eight characters: enough signal for GRPO to move."""
    texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
    return [-abs(8 - len(text)) / 8 for text in texts]


def save_base_model(folder: Path, *, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer as a local `model_name_or_path`."""
    tokenizer = build_tokenizer(seed=seed)
    model = build_model(tokenizer, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_demo_run(
    output_dir: Path,
    *,
    max_steps: int = 6,
    save_steps: int = 2,
    peft: bool = False,
    save_only_model: bool = False,
    report_to: str = "none",
    callbacks: list | None = None,
    seed: int = 0,
    resume_from_checkpoint: str | bool | None = None,
    save_final_model: bool = False,
    dataset: Any = None,
    **config_overrides: Any,
) -> Path:
    """Train a few GRPO steps with TRL on CPU; returns the output_dir holding checkpoint-N folders.

    `save_final_model` ends the run as `trl grpo` does: `trainer.save_model(output_dir)`. `dataset`: the
    train dataset (a `datasets.Dataset`, e.g. loaded from a local file) instead of the 64 built prompts.
    """
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = build_tokenizer(seed=seed)
    model = build_model(tokenizer, seed=seed)
    if dataset is None:
        dataset = Dataset.from_list(build_prompt_rows(64, seed=seed))
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    settings = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        save_steps=save_steps,
        logging_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to=report_to,
        save_only_model=save_only_model,
        seed=seed,
        disable_tqdm=True,
    )
    settings.update(config_overrides)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=GRPOConfig(**settings),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if save_final_model:
        trainer.save_model(str(output_dir))
    return Path(output_dir)


def reshard_checkpoint(checkpoint: Path, max_shard_size: str = "40KB") -> list[str]:
    """Re-save a checkpoint's model as transformers' sharded safetensors (index + shards)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    model.save_pretrained(checkpoint, max_shard_size=max_shard_size)
    return sorted(p.name for p in checkpoint.glob("model-*.safetensors"))


def hard_linked_checkpoints(template: Path, output_dir: Path, count: int, sealed_until: int) -> None:
    """`count` checkpoints hard-linked from one real checkpoint, a trainer_state.json per step; the first
    `sealed_until` sealed at save time (as SealCallback seals), the rest saved after sealing stopped."""
    import json
    import os

    from resumedoctor.integrations.seal.record import SEAL_FILE, build_seal, seal_bytes

    state = json.loads((template / "trainer_state.json").read_text())
    files = [p for p in template.iterdir() if p.is_file() and p.name not in ("trainer_state.json", SEAL_FILE)]
    output_dir.mkdir()
    for index in range(1, count + 1):
        step = 10 * index
        folder = output_dir / f"checkpoint-{step}"
        folder.mkdir()
        for path in files:
            os.link(path, folder / path.name)
        (folder / "trainer_state.json").write_text(json.dumps({**state, "global_step": step, "max_steps": 10 * count}))
        if index <= sealed_until:
            seal = build_seal(folder, global_step=step, world_size=1, arguments={}, versions={}, with_hashes=False)
            (folder / SEAL_FILE).write_bytes(seal_bytes(seal))
