"""How `fix` tells what it did (or would do): one line per change, where the backup is, what is left."""

from __future__ import annotations

import json

from resumedoctor.engine.operations import Quarantine, ReplaceTail
from resumedoctor.fixing.planner import FixResult, describe_operation, preview
from resumedoctor.io.printable import printable
from resumedoctor.report import render


def render_fix(result: FixResult, fmt: str, *, color: bool = False, asked_to_apply: bool = True) -> str:
    if fmt == "json":
        return json.dumps(_as_dict(result), indent=2) + "\n"
    lines = []
    for transaction_id in result.recovered:
        lines.append(f"finished the fix {transaction_id} that was interrupted")
    if result.dry_run:
        if result.operations:
            lines.append(f"would change {len(result.operations)} thing(s) in {result.output_dir}:")
            lines.append(preview(result.operations, result.output_dir).rstrip("\n"))
        else:
            lines.append("nothing to fix automatically")
        for operation in result.deferred:
            lines.append(f"# after the safe fixes, if still unusable: {describe_operation(operation, result.output_dir)}")
        lines.append("nothing was changed" + ("" if asked_to_apply else " (pass --auto to apply the safe fixes)"))
    elif result.transactions:
        for description in result.descriptions:
            lines.append(f"fixed: {description}")
        journal = result.transactions[-1].folder.parent
        lines.append(f"backup and journal: {journal} (resumedoctor undo {result.output_dir} puts it all back)")
    else:
        lines.append("nothing to fix automatically")
    if result.live_save:
        lines.append(result.live_save)
    unsafe = sorted({f"{finding.code} ({fixer.name})" for finding, fixer in result.skipped_unsafe})
    if unsafe:
        lines.append(f"not applied, unsafe (pass --unsafe): {', '.join(unsafe)}")
    lines.append("")
    text = printable("\n".join(lines), keep_newlines=True) + "\n"  # names and diffs come from the output_dir
    return text + render(result.final, "text", color=color)


def _as_dict(result: FixResult) -> dict:
    return {
        "output_dir": str(result.output_dir),
        "dry_run": result.dry_run,
        "recovered": result.recovered,
        "changes": [
            {"kind": "quarantine" if isinstance(op, Quarantine) else "tail" if isinstance(op, ReplaceTail) else "write",
             "path": str(op.path),
             "code": op.code, "fixer": op.fixer, "reason": op.reason}
            for op in result.operations
        ],
        "deferred": [str(op.path) for op in result.deferred],
        "live_save": result.live_save,
        "skipped_unsafe": sorted({finding.code for finding, _ in result.skipped_unsafe}),
        "transactions": [str(t.folder) for t in result.transactions],
        "report": result.final.to_dict(),
    }
