"""A third-party resumedoctor plugin: the team's policy that every run folder carries a model card.

TRL writes README.md (the model card) into the output_dir at every save; a run trained another way,
or whose card was deleted, has none, and the team's model registry refuses to take it without one.
"""

from resumedoctor.engine.findings import FixAvailability, FixSafety, Rule, Severity
from resumedoctor.engine.operations import WriteFile
from resumedoctor.engine.registry import CheckFamily, Fixer

CARD_MISSING = Rule(
    "CARD001", "model-card-missing", Severity.INFO,  # the resume is not affected: info
    "The output_dir has no README.md model card.",
    "The team's model registry refuses a run without a model card. TRL writes one at every save; a run "
    "trained another way, or whose card was deleted, has none. Resuming the run is not affected.",
)


def no_checkpoint(ctx) -> str | None:
    return None if ctx.target.checkpoints else "no checkpoint-N folder: not a run yet"


def run(ctx):
    card = ctx.target.output_dir / "README.md"
    if not (card.exists() or card.is_symlink()):
        yield CARD_MISSING.finding("no model card (README.md) in the output_dir", path=str(card),
                                   hint="`resumedoctor fix --auto` writes a stub for you to complete")


def plan_card_stub(ctx, finding) -> list[WriteFile]:
    checkpoints = ", ".join(folder.name for folder in ctx.target.checkpoints)
    text = (f"---\nlibrary_name: transformers\ntags:\n- model-card-stub\n---\n\n# {ctx.target.output_dir.name}\n\n"
            f"Checkpoints: {checkpoints}.\n\nTODO: base model, training data, intended use.\n")
    return [WriteFile(ctx.target.output_dir / "README.md", text.encode("utf-8"), "a model card stub to complete")]


FAMILY = CheckFamily(name="model-card", prefix="CARD", title="Team policy: every run folder carries a model card",
                     rules=(CARD_MISSING,), run=run, not_applicable=no_checkpoint)
FIXERS = [Fixer("write-model-card-stub", "model-card", (CARD_MISSING,), FixSafety.SAFE,
                "write a README.md model card stub (front matter and the checkpoints) to complete by hand",
                plan_card_stub, availability=FixAvailability.ALWAYS)]
