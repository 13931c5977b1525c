"""TEMPORARY stand-in for the GEN checks while branch g3 lacks them (engineers g1/g2 write the real ones).

`install()` replaces the groundwork stubs `record_findings` / `worker_findings` of
checks/generation_ledgers.py with a minimal detection of the findings the GEN fixers fix (each finding's
`path` is the file it is about). It does nothing once the real checks exist, so the fixer tests run against
the real checks after the merge; delete this module then. `python -c WRAPPED_CLI fix ...` is the CLI with it.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

WRAPPED_CLI = ("import sys, g3_standin_checks; g3_standin_checks.install()\n"
               "from resumedoctor.cli.app import main; main(sys.argv[1:])\n")


def install() -> bool:
    """Patch the stubs (True), or leave real checks alone (False)."""
    import resumedoctor.checks.generation_ledgers as gen

    if "return iter(())" not in inspect.getsource(gen.record_findings):
        return False
    gen.record_findings, gen.worker_findings = _record_findings, _worker_findings
    return True


def _files(ctx) -> list[Path]:
    from resumedoctor.fixers.generation_ledgers import results_files

    return results_files(ctx)


def _record_findings(ctx):
    import resumedoctor.checks.generation_ledgers as gen

    from resumedoctor.integrations.ledger.tally import tally_files, unit_key

    config = gen.config_of(ctx)
    tally = tally_files(_files(ctx), config)
    for file in tally.files:
        last = _last_entry(file.path) if file.format in ("jsonl", "csv") else None
        if last is not None and (last.problem or "").startswith(("torn", "unterminated")):
            yield gen.TORN_LAST_RECORD.finding(f"{file.path.name}: {last.problem}", path=str(file.path))
        if file.failures:
            yield gen.FAILURE_RECORDS.finding(f"{file.failures} failures", path=str(file.path))
        if file.processed_ids is not None:
            done = {unit_key(value) for value in file.processed_ids}
            ok = {key for key, counts in tally.units.items() if counts[0]}
            if done - ok:
                yield gen.FAILURES_MARKED_DONE.finding(f"{len(done - ok)} ids", path=str(file.path))
            if ok - done:
                yield gen.SUCCESSES_NOT_MARKED_DONE.finding(f"{len(ok - done)} ids", path=str(file.path))
    short = [key for key, counts in tally.units.items() if counts[0] < config.quota]
    if short or config.inputs is not None:
        yield gen.WORK_LEFT.finding(f"{len(short)} units below quota", path=str(ctx.target.path))


def _last_entry(path):
    from resumedoctor.io.records import iter_entries

    last = None
    for last in iter_entries(path):
        pass
    return last


def _worker_findings(ctx):
    import resumedoctor.checks.generation_ledgers as gen
    from resumedoctor.fixers.generation_ledgers import shard_files

    if not ctx.target.path.is_dir():
        return
    shards = shard_files(ctx.target.path)
    merged = [ctx.target.path / name for name in os.listdir(ctx.target.path) if "_merged." in name]
    if shards and not merged:
        yield gen.SHARDS_NOT_MERGED.finding(f"{len(shards)} shards", path=str(ctx.target.path))
    elif shards and any(m.stat().st_mtime_ns < s.stat().st_mtime_ns for m in merged for s in shards):
        yield gen.MERGED_STALE.finding("merged older than a shard", path=str(merged[0]))
