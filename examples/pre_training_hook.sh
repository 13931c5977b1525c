#!/usr/bin/env bash
# Pre-training hook: diagnose the run before every (re)start, refuse to start a resume that would go
# wrong, and make the next start log to the right W&B run. Use it in front of your training command:
#
#   examples/pre_training_hook.sh output/ trl grpo --config recipe.yaml
#
# Exit 1: the doctor found an error (nothing was started); exit 2: bad path or option.
set -euo pipefail

OUT="${1:?usage: pre_training_hook.sh OUTPUT_DIR TRAIN_COMMAND...}"
shift

# The training command's own recipe is checked too (`--config RECIPE`): without it, a recipe that does
# not resume (CFG006: training restarts at step 0 over the checkpoints) would pass the gate.
recipe=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --config) recipe=(--config "${args[i + 1]:-}") ;;
        --config=*) recipe=(--config "${args[i]#--config=}") ;;
    esac
done

# The first start of a run: the trainer would create OUT; create it now so the same checks run
# (an empty output_dir is "nothing to resume", and the recipe is still checked against it).
if [ ! -e "$OUT" ]; then
    echo "pre-training hook: $OUT does not exist yet: a first start" >&2
    mkdir -p -- "$OUT"
fi

status=0
resumedoctor diagnose "$OUT" ${recipe[@]+"${recipe[@]}"} || status=$?
if [ "$status" -eq 1 ]; then
    echo "pre-training hook: not starting; see the report above (resumedoctor explain CODE)" >&2
    exit 1
elif [ "$status" -ne 0 ]; then
    echo "pre-training hook: not starting; resumedoctor could not check $OUT (exit $status, see above)" >&2
    exit "$status"
fi

# W&B: continue the run, or fork it at the _step after the checkpoint; unset stale WANDB_* variables.
eval "$(resumedoctor env "$OUT" ${recipe[@]+"${recipe[@]}"})"

exec "$@"
