"""GEN: can a generation / inference job resume from its result ledger without losing or redoing work?

The target is a results file (JSONL, JSON, CSV, Parquet, an inference `checkpoint.json`) or a folder of
worker shards and their state files (engine/target.py, integrations/ledger/layout.py); how to read it is
the LedgerConfig (flags over `[tool.resumedoctor.ledger]`). Only successes count as done.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.context import LEDGER_SUMMARY, RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.integrations.ledger.config import LedgerConfig
from resumedoctor.integrations.ledger.inputs import InputList, over_budget, read_inputs
from resumedoctor.integrations.ledger.layout import (
    SHARD_RANGE_NAME,
    WORKER_STATE_NAME,
    is_ledger_file_name,
)
from resumedoctor.integrations.ledger.tally import (
    FileTally,
    Tally,
    tally_files,
    unit_key,
)
from resumedoctor.io.bounded_read import MiB
from resumedoctor.io.records import (
    CSV,
    JSONL,
    MAX_RECORD,
    TOO_LONG,
    UNTERMINATED,
    Entry,
)

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

# --- the records of one file (GEN001-007, GEN014-016, GEN018-020; GEN021-029 free for more) ---------
TORN_LAST_RECORD = Rule(
    "GEN001", "torn-last-record", ERROR,
    "The last record was cut off by a killed writer: the next append glues onto it.",
    "A writer killed mid-line (SIGKILL, OOM, preemption) leaves a last line without its newline. An "
    "appending resume writes its first record onto that line: both become one unparseable line and are "
    "lost, and a resume that reads the file line by line fails on it. A last line that parses but lacks "
    "its newline glues the same way. `fix --auto` cuts the torn bytes (kept in the backup) or adds the "
    "missing newline.",
)
UNPARSEABLE_RECORDS = Rule(
    "GEN002", "unparseable-records", ERROR,
    "Records inside the results file do not parse.",
    "Lines in the middle of the file that are not a JSON object (or a CSV row of the header's width): "
    "a resume that reads every record fails on them, and one that skips them cannot tell which inputs "
    "they answered, so those inputs are redone or lost. Lines too long to be a record are counted here.",
)
DUPLICATE_RESULTS = Rule(
    "GEN003", "duplicate-results", WARNING,
    "Some ids have more than one successful result: counts and downstream data see them twice.",
    "Two successes for one id (a worker range run twice, a resume that re-ran finished inputs): a quota "
    "counts the id twice and stops early, and a dataset built from the file holds the sample twice. "
    "Retries after a failure are not duplicates (a success wins over an error for the same id).",
)
FAILURES_MARKED_DONE = Rule(
    "GEN004", "failures-marked-done", ERROR,
    "processed_ids holds ids whose results are failures (or that have no result): the resume skips them forever.",
    "An inference loop that adds an id to `processed_ids` before it knows the answer succeeded (an "
    "`[ERROR] OOM` result, a crash before the write) makes every resume skip that input: its answer is "
    "never computed. `fix --auto` rebuilds processed_ids from the successful results.",
)
SUCCESSES_NOT_MARKED_DONE = Rule(
    "GEN005", "successes-not-marked-done", WARNING,
    "Successful results whose ids are not in processed_ids: the resume computes them again.",
    "The results hold answers the done-set does not list (the job was killed between writing a result "
    "and recording its id): a resume redoes them, costing their compute and appending a second result. "
    "`fix --auto` rebuilds processed_ids from the successful results.",
)
WORK_LEFT = Rule(
    "GEN006", "work-left", INFO,
    "Tasks below their quota: the work a resume still has to do, counting successes only.",
    "Each task needs `quota` successful results; failures do not count. The report's table lists done / "
    "quota / remaining per task and the total. `fix --auto` writes the remaining work as a file in the "
    "input's own format (the exact rows to run, with how many samples each still needs).",
)
NEVER_ATTEMPTED = Rule(
    "GEN007", "inputs-never-attempted", INFO,
    "Inputs of the work list that no record answers, not even with a failure.",
    "Inputs the job never reached (killed before them, or in a worker range that never ran). They are "
    "part of the work left; `fix --auto` writes them into the remaining-work file.",
)
OVER_TOKEN_BUDGET = Rule(
    "GEN014", "inputs-over-token-budget", WARNING,
    "Inputs longer than the token budget: the model truncates them or the request fails.",
    "Counted with the local tokenizer given (`tokenizer`, `token_budget`, `text_field`). An input over the "
    "model's window fails every retry (an endless `[ERROR]` for the same id) or is answered from a "
    "truncated prompt; truncate or drop them before the resume.",
)
RECORDS_WITHOUT_ID = Rule(
    "GEN015", "records-without-id", WARNING,
    "Records without the id (or task) field: they cannot be matched to an input.",
    "A record that lacks the field naming its input or task counts for nothing: its input is redone. "
    "Mixed schemas (a writer changed its field names mid-run) show up here; set `id_field` / `task_field`.",
)
NOT_JUDGED = Rule(
    "GEN016", "ledger-not-judged", INFO,
    "Part of the ledger could not be judged (unreadable, not a results format, no work list given).",
    "Said instead of silence: without the input file the work never attempted cannot be counted, a "
    "binary or unknown file cannot be read as records, a Parquet file needs pyarrow.",
)
FAILURE_RECORDS = Rule(
    "GEN018", "failure-records", INFO,
    "Failed results (errors) in the file: they count as not done and are run again.",
    "Only successes count as done, so a resume redoes these inputs; the failure records stay in the file "
    "as history. `fix --unsafe` drops them (a consumer that reads the file as a dataset then sees no "
    "error rows; the backup keeps them).",
)
ERRORS_COUNTED_AS_SUCCESS = Rule(
    "GEN019", "errors-counted-as-success", WARNING,
    "Records that look like errors count as successes under the success expression in use.",
    "Values such as `[ERROR] OOM: ...` in records the success expression calls successes (the default "
    "expression knows only `success` and `error` fields): the resume would skip those inputs. Set "
    "`success` (e.g. `!starts_with(prediction, '[ERROR]')`).",
)

PARQUET_WITHOUT_FOOTER = Rule(
    "GEN020", "parquet-without-footer", ERROR,
    "A Parquet results file has no footer: its writer was killed before closing it, and no row can be read.",
    "Parquet writes where every row group lies and the schema only when the writer closes the file. A "
    "job killed before that leaves a file that starts as Parquet and ends without its footer: pyarrow "
    "and pandas refuse it, so a resume that reads it fails, and its rows are lost. Move it aside and rerun "
    "the inputs it held; write Parquet in row groups that are closed as they go, or write JSON Lines.",
)

# --- helpers of the records part (record_findings, ledger_summary) ---------------------------------
MAX_NAMED = 10  # ids or lines named in one message; every one is in the finding's extra
MAX_LISTED_UNITS = 1000  # units listed in the report's ledger table (JSON); the rest are counted


def ledger_files(ctx: RunContext) -> list[Path]:
    """The results files to count: the file given, or the folder's shards (else its results files).

    A folder's merged file repeats its shards, and its state files and work list are no results.
    """
    target = ctx.target
    if target.listing is None:
        return [target.path]
    inputs = config_of(ctx).inputs
    names = sorted(name for name, is_dir in target.listing.items()
                   if not is_dir and is_ledger_file_name(name) and not WORKER_STATE_NAME.match(name)
                   and not (inputs is not None and _same_file(target.path / name, inputs)))
    shards = [name for name in names if SHARD_RANGE_NAME.search(name)]
    return [target.path / name for name in (shards or names)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def ledger_tally(ctx: RunContext) -> Tally:
    """The one streaming pass over the ledger's results, once per run."""
    return ctx.memo(("ledger-tally",), lambda: tally_files(ledger_files(ctx), config_of(ctx)), "tally_files")


def ledger_inputs(ctx: RunContext) -> InputList | None:
    return ctx.memo(("ledger-inputs",), lambda: read_inputs(config_of(ctx)), "read_inputs")


def _name(ctx: RunContext, path: Path) -> str:
    """A file as findings name it: relative to the folder that holds the ledger."""
    try:
        return str(path.relative_to(ctx.target.output_dir))
    except ValueError:
        return str(path)


def _listed(items: list, total: int | None = None) -> str:
    """`a, b, c` or `a, b, c ... (N in all)`: a message names at most MAX_NAMED."""
    total = len(items) if total is None else total
    shown = ", ".join(str(item) for item in items[:MAX_NAMED])
    return shown + (f" ... ({total} in all)" if total > min(len(items), MAX_NAMED) else "")


def _where(ft: FileTally) -> str:
    """What a record's number counts in this format."""
    return "line" if ft.format in (JSONL, CSV) else "record"


def _finding(rule: Rule, message: str, *, path: str | None, hint: str, **extra) -> Finding:
    return dataclasses.replace(rule.finding(message, path=path, hint=hint), extra=extra)


def _file_findings(ctx: RunContext, ft: FileTally) -> Iterator[Finding]:
    """GEN001, GEN002, GEN015, GEN016, GEN020 for one results file."""
    name = _name(ctx, ft.path)
    if ft.unreadable is not None:
        yield from _unreadable(name, ft)
        return
    if ft.records == 0 and ft.problem_count > 1:  # a log, a renamed CSV: no results file at all
        yield _finding(NOT_JUDGED, f"{name}: none of its {ft.problem_count} {_where(ft)}s is a record (the first: "
                       f"{ft.problems[0].problem}): not a results file in this format; not judged", path=name,
                       hint="give a results file (JSON Lines, JSON, CSV, Parquet or an inference checkpoint.json)",
                       file=str(ft.path))
        return
    if (torn := ft.torn) is not None:
        yield _torn(name, ft, torn)
    if ft.inner_problems:
        yield _unparseable(name, ft)
    if ft.without_key:
        yield _without_key(ctx, name, ft)


def _unreadable(name: str, ft: FileTally) -> Iterator[Finding]:
    if ft.no_footer:
        yield _finding(PARQUET_WITHOUT_FOOTER, f"{name} {ft.unreadable}; none of its rows can be read", path=name,
                       hint="move it aside and rerun the inputs it held (its rows are lost)", file=str(ft.path))
    elif ft.damaged:
        yield _finding(UNPARSEABLE_RECORDS, f"{name}: the JSON document does not parse ({ft.unreadable}); none "
                       "of its records can be read", path=name, file=str(ft.path),
                       hint="a writer killed mid-dump leaves a cut document: restore it from a copy, or move "
                            "it aside and rerun its inputs")
    else:
        yield _finding(NOT_JUDGED, f"{name} {ft.unreadable}: not judged", path=name, file=str(ft.path),
                       hint="give a results file (JSON Lines, JSON, CSV, Parquet or an inference checkpoint.json)")


def _torn(name: str, ft: FileTally, torn: Entry) -> Finding:
    kind = torn.problem.split(":")[0]
    where = f"line {torn.number} (byte offset {torn.offset}, {torn.size} bytes)"
    if kind == UNTERMINATED:
        message = f"{name}: the last record, {where}, parses but has no newline: the next append glues onto it"
        hint = "run `resumedoctor fix --auto` to add the newline, or append one yourself before resuming"
    else:
        detail = torn.problem.split(": ", 1)[-1]
        message = f"{name}: the last record, {where}, is cut off mid-record (no newline, does not parse: {detail})"
        hint = (f"run `resumedoctor fix --auto` to cut its {torn.size} bytes (kept in the backup), or truncate "
                f"the file to {torn.offset} bytes; its input is then run again")
    return _finding(TORN_LAST_RECORD, message, path=name, hint=hint, file=str(ft.path), line=torn.number,
                    offset=torn.offset, size=torn.size, problem=kind)


def _unparseable(name: str, ft: FileTally) -> Finding:
    inner = [entry for entry in ft.problems if entry is not ft.torn]
    too_long = sum(1 for entry in inner if entry.problem.startswith(TOO_LONG))
    numbers = _listed([entry.number for entry in inner], ft.inner_problems)
    first = inner[0].problem if inner else ""
    longer = f"; {too_long} of them longer than {MAX_RECORD // MiB} MiB" if too_long else ""
    return _finding(UNPARSEABLE_RECORDS, f"{name}: {ft.inner_problems} {_where(ft)}s are not records "
                    f"({_where(ft)}s {numbers}; the first: {first}){longer}", path=name,
                    hint="a resume that reads every record fails on them: repair or remove those lines (one JSON "
                         "object per line), then rerun the inputs they held",
                    file=str(ft.path), lines=[entry.number for entry in inner], count=ft.inner_problems)


def _without_key(ctx: RunContext, name: str, ft: FileTally) -> Finding:
    unit = config_of(ctx).unit_field
    option = "--task-field" if config_of(ctx).task_field else "--id-field"
    if ft.without_key == ft.records:
        message = (f"{name}: none of its {ft.records} records has the field `{unit}`; the first has the fields "
                   f"{', '.join(map(repr, ft.first_fields or []))}")
        hint = f"name the field that says which input or task a record answers ({option} or [tool.resumedoctor.ledger])"
    else:
        message = (f"{name}: {ft.without_key} of {ft.records} records have no `{unit}` field ({_where(ft)}s "
                   f"{_listed(ft.without_key_examples, ft.without_key)}): they count for no {unit}")
        hint = "mixed schemas (a writer that changed its fields mid-run): fix those records or their writer"
    return _finding(RECORDS_WITHOUT_ID, message, path=name, hint=hint, file=str(ft.path), count=ft.without_key)


def _outcome_findings(ctx: RunContext, tally: Tally) -> Iterator[Finding]:
    """GEN018 failures, GEN019 error-like successes, GEN003 duplicates, over all files."""
    config = config_of(ctx)
    for ft in tally.files:
        name = _name(ctx, ft.path)
        if ft.failures:
            yield _finding(FAILURE_RECORDS, f"{name}: {ft.failures} of {ft.records} results are failures under "
                           f"the success expression {config.success!r}; they count as not done and run again", path=name,
                           hint="nothing to do: the resume reruns them (`fix --unsafe` drops them from the file)",
                           file=str(ft.path), count=ft.failures)
        if ft.error_like:
            yield _finding(ERRORS_COUNTED_AS_SUCCESS, f"{name}: {ft.error_like} results that count as successes "
                           f"under {config.success!r} hold a value that starts like an error ({_where(ft)}s "
                           f"{_listed(ft.error_like_examples, ft.error_like)}): the resume skips their inputs",
                           path=name, file=str(ft.path), count=ft.error_like,
                           hint="set the success expression to exclude them, e.g. --success "
                                "\"!starts_with(prediction, '[ERROR]')\" (with your field)")
    if tally.duplicate_successes:
        yield _duplicates(ctx, tally)


def _duplicates(ctx: RunContext, tally: Tally) -> Finding:
    dups = tally.duplicate_successes
    shown = [f"{key.replace(chr(0), '/')} x{count}" for key, count in list(dups.items())[:MAX_NAMED]]
    extra = sum(dups.values()) - len(dups)
    field = config_of(ctx).id_field + (f" within {config_of(ctx).task_field}" if config_of(ctx).task_field else "")
    return _finding(DUPLICATE_RESULTS, f"{len(dups)} ids ({field}) have more than one successful result, "
                    f"{extra} extra in all: {_listed(shown, len(dups))}", path=None, count=len(dups),
                    hint="a range run twice or a resume that redid finished inputs: count and train on one "
                         "result per id (`fix --auto` merges keeping one)",
                    ids=[key.replace(chr(0), "/") for key in list(dups)[:MAX_LISTED_UNITS]])


def _checkpoint_findings(ctx: RunContext, ft: FileTally) -> Iterator[Finding]:
    """GEN004 / GEN005: an inference checkpoint.json's processed_ids against its results."""
    if ft.processed_ids is None or ft.outcomes is None:
        return
    name, outcomes = _name(ctx, ft.path), ft.outcomes
    processed = list(dict.fromkeys(key for key in map(unit_key, ft.processed_ids) if key is not None))
    done = set(processed)
    failed = [key for key in processed if outcomes.get(key) is False]
    missing = [key for key in processed if key not in outcomes]
    if failed or missing:
        ids = failed + missing
        yield _finding(FAILURES_MARKED_DONE, f"{name}: {len(ids)} of the {len(processed)} ids in processed_ids have "
                       f"no successful result ({len(failed)} failed, {len(missing)} without any result): "
                       f"{_listed(ids)}", path=name, file=str(ft.path), ids=ids,
                       hint="a resume skips them forever: `fix --auto` rebuilds processed_ids from the successful "
                            "results (or remove those ids from processed_ids)")
    unmarked = [key for key, ok in outcomes.items() if ok and key not in done]
    if unmarked:
        yield _finding(SUCCESSES_NOT_MARKED_DONE, f"{name}: {len(unmarked)} successful results are not in "
                       f"processed_ids: {_listed(unmarked)}; a resume computes them again", path=name,
                       file=str(ft.path), ids=unmarked,
                       hint="`fix --auto` rebuilds processed_ids from the successful results")


@dataclass
class Work:
    """Every unit against its quota: the units of the work list (or those seen, without one)."""

    keys: Iterable[str]
    units: int
    left: int  # units below quota
    not_started: int  # units with no success at all and no record (never attempted)
    needed: int  # successes still needed
    all_known: bool  # the work list was read: units never started are counted too


def ledger_work(ctx: RunContext) -> Work:
    return ctx.memo(("ledger-work",), lambda: _work(ctx), "ledger_work")


def _work(ctx: RunContext) -> Work:
    tally, inputs, quota = ledger_tally(ctx), ledger_inputs(ctx), config_of(ctx).quota
    known = inputs is not None and inputs.unreadable is None
    keys = inputs.keys if known else tally.units
    left = not_started = needed = 0
    for key in keys:
        counts = tally.units.get(key)
        done = counts[0] if counts else 0
        if done < quota:
            left += 1
            needed += quota - done
            not_started += counts is None
    return Work(keys, len(keys), left, not_started, needed, known)


def _work_findings(ctx: RunContext, tally: Tally) -> Iterator[Finding]:
    """GEN006 work left, GEN007 inputs never attempted, GEN016 when the work list is unknown."""
    config, work, inputs = config_of(ctx), ledger_work(ctx), ledger_inputs(ctx)
    unit, quota = _units_word(config), config.quota
    if inputs is None:
        yield NOT_JUDGED.finding(f"no work list given: {unit} that no record names (never started) are not "
                                 f"counted; judged: only the {work.units} the results name",
                                 hint="give the inputs file (--inputs or `inputs` in [tool.resumedoctor.ledger])")
    elif inputs.unreadable is not None:
        yield NOT_JUDGED.finding(f"the inputs file {inputs.path} {inputs.unreadable}: inputs never started are "
                                 "not counted", hint="give a readable inputs file (JSON Lines, JSON, CSV, Parquet)")
    if work.left:
        seen = "" if work.all_known else " seen"
        yield _finding(WORK_LEFT, f"{work.left} of the {work.units} {unit}{seen} are below the quota of {quota} "
                       f"success{'es' if quota != 1 else ''}: {work.needed} successes still needed "
                       f"({work.left - work.not_started} partly done or failed, {work.not_started} not started)",
                       path=None, hint="resume the job for these (`fix --auto` writes them as a remaining-work "
                                       "file); the report's table lists each", units_left=work.left,
                       work_left=work.needed)
    if work.all_known and work.not_started:
        never = [key for key in work.keys if key not in tally.units]
        yield _finding(NEVER_ATTEMPTED, f"{len(never)} of the {work.units} inputs have no record at all (never "
                       f"attempted): {_listed(never)}", path=None, ids=never[:MAX_LISTED_UNITS], count=len(never),
                       hint="they are part of the work left: resume the job (or run the remaining-work file)")
    if inputs is not None and inputs.without_key:
        yield NOT_JUDGED.finding(f"{inputs.without_key} of the {inputs.rows} rows of {inputs.path} have no "
                                 f"`{config.input_key}` field: they name no unit and are not counted",
                                 hint="set input_id_field to the inputs' field that names a unit")


def _units_word(config: LedgerConfig) -> str:
    return f"tasks (by `{config.task_field}`)" if config.task_field else f"inputs (by `{config.id_field}`)"


def _budget_findings(ctx: RunContext) -> Iterator[Finding]:
    """GEN014: inputs over the token budget, counted with the local tokenizer given."""
    config = config_of(ctx)
    if config.token_budget is None:
        return
    budget = over_budget(config)
    if budget is None:
        missing = "a tokenizer (--tokenizer)" if config.tokenizer is None else "the inputs file (--inputs)"
        yield NOT_JUDGED.finding(f"token budget {config.token_budget} given without {missing}: input lengths "
                                 "not judged", hint="give a local tokenizer folder and the inputs file")
    elif budget.not_counted is not None:
        yield NOT_JUDGED.finding(f"input lengths not judged: {budget.not_counted}",
                                 hint="give a local tokenizer folder holding tokenizer.json")
    elif budget.over:
        shown = [f"{key} ({tokens} tokens)" for key, tokens in budget.examples]
        yield _finding(OVER_TOKEN_BUDGET, f"{budget.over} of {budget.counted} inputs are longer than the budget of "
                       f"{config.token_budget} tokens in `{config.text_field}` (longest {budget.longest}): "
                       f"{_listed(shown, budget.over)}", path=None, count=budget.over,
                       hint="truncate or drop them before the resume: they fail every retry or are answered from "
                            "a cut prompt")


# --- worker shards and their state files (GEN008-013, GEN017; GEN030-039 free for more) --------------
RANGE_GAP = Rule(
    "GEN008", "worker-range-gap", ERROR,
    "Inputs that no worker range covers: no worker will ever process them.",
    "The ranges in the worker state files leave out part of the work list (a scheduler that rounded "
    "down, a worker file lost): the merged output silently lacks those inputs.",
)
RANGE_OVERLAP = Rule(
    "GEN009", "worker-range-overlap", WARNING,
    "Worker ranges overlap: the inputs they share are processed twice.",
    "Two workers claim the same inputs: their compute is spent twice and the shards hold duplicates, "
    "which a merge must deduplicate (`fix --auto` merges with a success winning over an error).",
)
DONE_SHARD_MISSING = Rule(
    "GEN010", "finished-worker-shard-missing", ERROR,
    "A worker's state says done but its result shard is missing: a resume skips it and its inputs are lost.",
    "A resume skips finished workers, so a worker marked done whose shard was deleted, never flushed or "
    "written elsewhere loses its whole range. Mark it not done (or rerun it).",
)
DONE_SHARD_SHORT = Rule(
    "GEN011", "finished-worker-shard-short", ERROR,
    "A worker's state says done but its shard holds fewer results than its range has inputs.",
    "A shard killed before its last flush, or a worker that skipped inputs: a resume skips the worker, "
    "and the missing inputs are never processed.",
)
SHARDS_NOT_MERGED = Rule(
    "GEN012", "shards-not-merged", WARNING,
    "Every worker finished but the shards were not merged into one results file.",
    "Consumers of the job read the merged file; until the merge runs it does not exist. `fix --auto` "
    "merges the shards into one deduplicated file in their format (a success wins over an error).",
)
MERGED_STALE = Rule(
    "GEN013", "merged-file-stale", ERROR,
    "The merged results file is older than a shard, or lacks results a shard holds.",
    "A worker reran after the merge: the merged file silently lacks its newer results, and training on "
    "it trains without them. `fix --auto` merges again.",
)
WORKER_NOT_FINISHED = Rule(
    "GEN017", "worker-not-finished", INFO,
    "Workers whose state says failed or still running: a resume reruns their ranges.",
    "Part of the work left; their partial shards are kept and only their missing or failed inputs need "
    "to run again.",
)

RULES = (TORN_LAST_RECORD, UNPARSEABLE_RECORDS, DUPLICATE_RESULTS, FAILURES_MARKED_DONE,
         SUCCESSES_NOT_MARKED_DONE, WORK_LEFT, NEVER_ATTEMPTED, RANGE_GAP, RANGE_OVERLAP, DONE_SHARD_MISSING,
         DONE_SHARD_SHORT, SHARDS_NOT_MERGED, MERGED_STALE, OVER_TOKEN_BUDGET, RECORDS_WITHOUT_ID, NOT_JUDGED,
         WORKER_NOT_FINISHED, FAILURE_RECORDS, ERRORS_COUNTED_AS_SUCCESS, PARQUET_WITHOUT_FOOTER)


def config_of(ctx: RunContext) -> LedgerConfig:
    """How to read this ledger: the options' LedgerConfig, else the defaults."""
    return ctx.options.ledger if ctx.options.ledger is not None else LedgerConfig()


def record_findings(ctx: RunContext) -> Iterator[Finding]:
    """GEN001-007, GEN014-016, GEN018-020: the records of the results file(s)."""
    tally = ledger_tally(ctx)
    for ft in tally.files:
        yield from _file_findings(ctx, ft)
        yield from _checkpoint_findings(ctx, ft)
    yield from _outcome_findings(ctx, tally)
    yield from _work_findings(ctx, tally)
    yield from _budget_findings(ctx)


def worker_findings(ctx: RunContext) -> Iterator[Finding]:
    """GEN008-013, GEN017: worker ranges, their state files and shards, the merged file."""
    return iter(())


def ledger_summary(ctx: RunContext) -> dict:
    """The work left as plain data for the report: the per-task table and the totals.

    `tasks` lists the units below quota first (in work-list order), then the finished ones, at most
    MAX_LISTED_UNITS of them; `tasks_not_listed` counts the rest.
    """
    config, tally, work = config_of(ctx), ledger_tally(ctx), ledger_work(ctx)
    rows: list[dict] = []
    for below in (True, False):
        for key in work.keys:
            done = tally.successes(key)
            if (done < config.quota) is below and len(rows) < MAX_LISTED_UNITS:
                rows.append({"task": key, "done": done, "quota": config.quota,
                             "remaining": max(config.quota - done, 0)})
    readable = [ft for ft in tally.files if ft.unreadable is None]
    return {"unit": config.unit_field, "quota": config.quota, "tasks": rows,
            "tasks_not_listed": work.units - len(rows), "units": work.units, "units_left": work.left,
            "work_left": work.needed if readable or work.all_known else None,
            "all_units_known": work.all_known, "records": tally.records,
            "successes": sum(ft.successes for ft in tally.files), "failures": sum(ft.failures for ft in tally.files),
            "files": [_name(ctx, ft.path) for ft in tally.files]}


def run(ctx: RunContext) -> Iterator[Finding]:
    yield from record_findings(ctx)
    yield from worker_findings(ctx)


FAMILY = CheckFamily(
    name="generation-ledgers",
    prefix="GEN",
    title="Generation and inference ledgers",
    rules=RULES,
    run=run,
    applies_to=("ledger",),
    services={LEDGER_SUMMARY: ledger_summary},
)
