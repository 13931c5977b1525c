"""GEN: can a generation / inference job resume from its result ledger without losing or redoing work?

The target is a results file (JSONL, JSON, CSV, Parquet, an inference `checkpoint.json`) or a folder of
worker shards and their state files (engine/target.py, integrations/ledger/layout.py); how to read it is
the LedgerConfig (flags over `[tool.resumedoctor.ledger]`). Only successes count as done.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.engine.context import LEDGER_SUMMARY, RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.errors import ReasonError
from resumedoctor.integrations.ledger.config import LedgerConfig, command_line
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
from resumedoctor.integrations.ledger.workers import (
    DONE,
    Worker,
    WorkerLayout,
    inside,
    read_layout,
)
from resumedoctor.io.bounded_read import MiB
from resumedoctor.io.printable import printable
from resumedoctor.io.records import (
    CSV,
    JSON_OBJECT,
    JSONL,
    MAX_RECORD,
    TOO_LONG,
    UNTERMINATED,
    Entry,
    RecordsError,
    detect_format,
    iter_entries,
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
    "Failed results (errors) in the file: they count for nothing; what is still short of its quota runs again.",
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
SUCCESS_NOT_JUDGED = Rule(
    "GEN021", "success-not-judged", WARNING,
    "The success expression fails on every record: no result was judged a success or a failure.",
    "A JMESPath function given a value of a type it does not take (`abs(text)`, `length(id)` on a "
    "number, `sort_by` on one record) fails on the record. Such a record is neither a success nor a "
    "failure (never dropped as a failure); when that is every record, the work left is not known. Fix the "
    "`success` expression for the records' fields and types. (On some records only: GEN016 says how many.)",
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
    # Links leading out of the folder are never read; a remaining-work file a fix wrote is no results.
    names = sorted(name for name, is_dir in target.listing.items()
                   if not is_dir and is_ledger_file_name(name) and not WORKER_STATE_NAME.match(name)
                   and ".remaining." not in name and inside(target.path, name)
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
                           f"the success expression {config.success!r}: they count for nothing (only successes count toward "
                           "the quota; an input or task still short of it runs again)", path=name,
                           hint="nothing to do: the resume reruns what is still short (`fix --unsafe` drops the "
                                "failure records from the file)",
                           file=str(ft.path), count=ft.failures)
        if ft.unjudged:
            yield _unjudged(ft, name, config.success)
        if ft.error_like:
            yield _finding(ERRORS_COUNTED_AS_SUCCESS, f"{name}: {ft.error_like} results that count as successes "
                           f"under {config.success!r} hold a value that starts like an error ({_where(ft)}s "
                           f"{_listed(ft.error_like_examples, ft.error_like)}): the resume skips their inputs",
                           path=name, file=str(ft.path), count=ft.error_like,
                           hint="set the success expression to exclude them, e.g. --success "
                                "\"!starts_with(prediction, '[ERROR]')\" (with your field)")
    if tally.duplicate_successes:
        yield _duplicates(ctx, tally)


def _unjudged(ft: FileTally, name: str, success: str) -> Finding:
    every = not ft.successes and not ft.failures
    rule = SUCCESS_NOT_JUDGED if every else NOT_JUDGED
    return _finding(rule, f"{name}: success not judged for {ft.unjudged} of {ft.records} records: the success "
                    f"expression {success!r} fails on them ({ft.unjudged_error}); they count neither as "
                    "successes nor as failures" + (": the work left is not known" if every else ""), path=name,
                    hint="fix the success expression for these records' fields (--success or `success` in "
                         "[tool.resumedoctor.ledger])", file=str(ft.path), count=ft.unjudged)


def ledger_judged(tally: Tally) -> bool:
    """Was any record judged a success or a failure (or were there none to judge)?"""
    return any(ft.successes or ft.failures for ft in tally.files) or not any(ft.unjudged for ft in tally.files)


def _duplicates(ctx: RunContext, tally: Tally) -> Finding:
    dups = tally.duplicate_successes
    shown = [f"{key.replace(chr(0), '/')} x{count}" for key, count in list(dups.items())[:MAX_NAMED]]
    extra = sum(dups.values()) - len(dups)
    field = config_of(ctx).id_field + (f" within {config_of(ctx).task_field}" if config_of(ctx).task_field else "")
    return _finding(DUPLICATE_RESULTS, f"{len(dups)} ids ({field}) have more than one successful result, "
                    f"{extra} extra in all: {_listed(shown, len(dups))}", path=None, count=len(dups),
                    hint="a range run twice or a resume that redid finished inputs: keep one result per id "
                         "when you count or train on the file (no fix rewrites it: deduplicate it yourself, e.g. "
                         "keep the first record of each id)",
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
    if work.left and ledger_judged(tally):  # (not judged at all: GEN021 says the work left is unknown)
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
    "to run again. A state that says running cannot be told apart here from a worker killed while it ran "
    "(SIGKILL, preemption: nothing rewrote its state): if no process of the job is alive, it is dead.",
)
WORKER_STATE_DAMAGED = Rule(
    "GEN030", "worker-state-damaged", WARNING,
    "A worker's state file is damaged or holds a range that is no range: its worker cannot be judged.",
    "A state file that is not a JSON object (a write killed halfway, hand edits), or whose range has the "
    "wrong type, ends before it starts or is a number no work list has. A resume that reads it fails, or "
    "treats the worker as never started and reruns its range; whether its inputs are covered and done is "
    "not known. Rewrite the state file (or delete it and rerun that worker).",
)
SHARD_WITHOUT_STATE = Rule(
    "GEN031", "shard-without-state", INFO,
    "A result shard whose range no worker state file claims.",
    "A leftover of an earlier split, or a worker whose state file was lost. Its results count for the work "
    "left and its range as covered; a resume that goes by the state files neither skips nor reruns it, "
    "and a merge includes it.",
)
FINISHED_WORKER_FAILURES = Rule(
    "GEN032", "finished-worker-failures", WARNING,
    "A worker's state says done but some inputs of its shard have only failed results.",
    "A resume that skips finished workers never retries these inputs: they stay failures although a "
    "rerun could answer them. Intended when the failures are final (a content filter); otherwise mark the "
    "worker not done, or write the remaining work (`fix --auto`) and run it.",
)

RULES = (TORN_LAST_RECORD, UNPARSEABLE_RECORDS, DUPLICATE_RESULTS, FAILURES_MARKED_DONE,
         SUCCESSES_NOT_MARKED_DONE, WORK_LEFT, NEVER_ATTEMPTED, RANGE_GAP, RANGE_OVERLAP, DONE_SHARD_MISSING,
         DONE_SHARD_SHORT, SHARDS_NOT_MERGED, MERGED_STALE, OVER_TOKEN_BUDGET, RECORDS_WITHOUT_ID, NOT_JUDGED,
         WORKER_NOT_FINISHED, FAILURE_RECORDS, ERRORS_COUNTED_AS_SUCCESS, PARQUET_WITHOUT_FOOTER,
         SUCCESS_NOT_JUDGED)
RULES += (WORKER_STATE_DAMAGED, SHARD_WITHOUT_STATE, FINISHED_WORKER_FAILURES)


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
    """GEN008-013, GEN017, GEN030-032: worker ranges, their state files and shards, the merged file."""
    layout = worker_layout(ctx)
    if layout is None or not layout.is_worker_job:
        return
    shards = _WorkerShards(ctx, layout)
    yield from _state_findings(layout)
    yield from _range_findings(ctx, layout)
    for worker in layout.workers:
        yield from _finished_worker_findings(layout, worker, shards)
    yield from _unfinished_findings(layout, shards)
    yield from _merge_findings(layout, shards)


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
            "work_left": work.needed if (readable or work.all_known) and ledger_judged(tally) else None,
            "all_units_known": work.all_known, "records": tally.records,
            "successes": sum(ft.successes for ft in tally.files), "failures": sum(ft.failures for ft in tally.files),
            "not_judged": sum(ft.unjudged for ft in tally.files),
            "files": [_name(ctx, ft.path) for ft in tally.files],
            "options": command_line(config) + (["--ledger"] if ctx.options.ledger_asked and ctx.target.path.is_dir()
                                               else [])}


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


# --- worker shards: helpers of worker_findings --------------------------------------------------------
MAX_LISTED = 5  # ranges, workers or ids named in one message


def worker_layout(ctx: RunContext) -> WorkerLayout | None:
    """The workers, shards and merged files of a folder ledger (None: the target is one results file)."""
    target = ctx.target
    if not target.is_ledger or target.listing is None or not target.path.is_dir():
        return None
    return ctx.memo(("ledger-workers", target.path), lambda: read_layout(target.path, target.listing),
                    "read_worker_layout")


class _WorkerShards:
    """What the shards hold, read once each (integrations/ledger/tally.py): per worker and for the merge."""

    def __init__(self, ctx: RunContext, layout: WorkerLayout):
        self.ctx, self.layout, self.config = ctx, layout, config_of(ctx)

    def tally(self, name: str, by_id: bool = False) -> Tally | str:
        """The tally of one file of the folder (`by_id`: per id, not per task), or why it cannot be read."""
        config = dataclasses.replace(self.config, task_field=None) if by_id else self.config

        def read() -> Tally | str:
            try:
                return tally_files([self.layout.folder / name], config)
            except (ReasonError, OSError) as exc:
                return exc.reason if isinstance(exc, ReasonError) else str(exc)
        return self.ctx.memo(("ledger-shard-tally", self.layout.folder, name, by_id), read, "tally_files")

    def units(self, names: Iterable[str], by_id: bool = False) -> dict[str, list[int]] | str:
        """unit key (or id) -> [successes, failures] over these files, or why one cannot be read."""
        units: dict[str, list[int]] = {}
        for name in names:
            tally = self.tally(name, by_id)
            if isinstance(tally, str):
                return f"{printable(name)}: {tally}"
            for key, (successes, failures) in tally.units.items():
                counts = units.setdefault(key, [0, 0])
                counts[0] += successes
                counts[1] += failures
        return units

    def records(self, names: Iterable[str]) -> tuple[int, int, int]:
        """(usable records, records without the unit field, unusable lines) over these (readable) files."""
        tallies = [t for t in map(self.tally, names) if not isinstance(t, str)]
        files = [f for t in tallies for f in t.files]
        return sum(f.records for f in files), sum(f.without_key for f in files), sum(f.problem_count for f in files)


def _state_findings(layout: WorkerLayout) -> Iterator[Finding]:
    """GEN030 damaged state files, GEN016 what is not read, GEN031 shards no state file claims."""
    for worker in layout.workers:
        path = str(layout.folder / worker.state_files[0])
        if worker.problem:
            yield WORKER_STATE_DAMAGED.finding(
                f"{worker.label}: {worker.problem}; "
                f"{'whether it finished' if worker.has_range else 'its range and status'} not judged", path=path,
                hint="rewrite the state file with the worker's range and status, or delete it and rerun that worker")
        if worker.outside:
            yield NOT_JUDGED.finding(
                f"{worker.label}'s state names its shard {worker.outside!r}, outside {layout.folder}: not read, "
                f"so its results are not judged", path=path,
                hint="diagnose the folder that holds the shards, or move the shard beside its state file")
    for name in layout.outside:
        yield NOT_JUDGED.finding(f"{printable(name)} leads outside {layout.folder} (a link): not read",
                                 path=str(layout.folder / name))
    if layout.unread_states:
        yield NOT_JUDGED.finding(f"{_count(layout.unread_states, 'worker state file')} beyond the first "
                                 f"{len(layout.workers)} were not read", path=str(layout.folder))
    if layout.workers:
        for shard in layout.orphans:
            yield SHARD_WITHOUT_STATE.finding(
                f"{printable(shard.name)} (rows [{shard.start}, {shard.end})) has no worker state file: its "
                f"results count, its range counts as covered", path=str(layout.folder / shard.name))
    elif layout.orphans:
        yield NOT_JUDGED.finding(
            f"{_count(len(layout.orphans), 'result shard')} and no worker state files: whether each worker finished is "
            f"not judged (only the ranges in the shards' names are)", path=str(layout.folder))


def _spans(layout: WorkerLayout) -> list[tuple[int, int, str]]:
    """(start, end, who) of every known range: the workers', and the shards no state file claims."""
    spans = [(w.start, w.end, w.label) for w in layout.workers if w.has_range]
    spans += [(s.start, s.end, printable(s.name)) for s in layout.orphans]
    return sorted(span for span in spans if span[1] > span[0])


def _range_findings(ctx: RunContext, layout: WorkerLayout) -> Iterator[Finding]:
    """GEN008 rows no range covers (up to the work list's end when it is given), GEN009 overlaps."""
    spans = _spans(layout)
    inputs = config_of(ctx).inputs or layout.inputs
    total, why = _work_list_rows(ctx, inputs)
    if why:
        yield NOT_JUDGED.finding(f"the work list {why}: the ranges are checked only against each other",
                                 path=str(inputs))
    gaps = _gaps(spans, total)
    unknown = [w.label for w in layout.workers if not w.has_range]
    if gaps and unknown:
        yield NOT_JUDGED.finding(
            f"rows {_rows(gaps)} are in no known range, but the range of {_listed_names(unknown)} is not known: "
            f"the gaps are not judged", path=str(layout.folder))
    elif gaps:
        yield _gap_finding(layout, gaps, total, inputs)
    elif spans and total is None:
        yield NOT_JUDGED.finding(
            f"the worker ranges cover rows [0, {max(end for _, end, _ in spans)}) without gaps; whether the work "
            f"list has more rows is not judged", path=str(layout.folder),
            hint="give --inputs (the work list) to check that the last range reaches its end")
    overlaps = _overlaps(spans)
    if overlaps:
        shared = sum(end - start for start, end, _, _ in overlaps)
        named = "; ".join(f"rows [{a}, {b}): {one} and {two}" for a, b, one, two in overlaps[:MAX_LISTED])
        yield RANGE_OVERLAP.finding(
            f"{_count(len(overlaps), 'overlap')} of worker ranges, {shared} rows processed twice ({named}"
            f"{'; ...' if len(overlaps) > MAX_LISTED else ''})", path=str(layout.folder),
            hint="merge with deduplication (`resumedoctor fix --auto`); fix the split before the next run")


def _gap_finding(layout: WorkerLayout, gaps: list[tuple[int, int]], total: int | None, inputs: Path | None) -> Finding:
    missing = sum(end - start for start, end in gaps)
    of = f" of the {total} inputs ({printable(str(inputs))})" if total is not None else ""
    return RANGE_GAP.finding(
        f"rows {_rows(gaps)}{of} are in no worker range: {missing} inputs no worker will ever process",
        path=str(layout.folder),
        hint=f"run a worker for {_rows(gaps[:1])} (and each other gap), or redo the split")


def _work_list_rows(ctx: RunContext, inputs: Path | None) -> tuple[int | None, str | None]:
    """The rows of the inputs file (the work list), or why they cannot be counted; (None, None): none given."""
    if inputs is None:
        return None, None

    def count() -> int:
        fmt = detect_format(Path(inputs))
        if fmt == JSON_OBJECT:
            raise RecordsError("is one JSON object, not a list of inputs")
        return sum(1 for _ in iter_entries(Path(inputs), fmt))
    try:
        return ctx.memo(("ledger-input-rows", str(inputs)), count, "count_inputs"), None
    except ReasonError as exc:
        return None, f"{printable(str(inputs))} {exc.reason}"
    except OSError as exc:
        return None, f"{printable(str(inputs))} cannot be read: {exc.strerror or exc}"


def _gaps(spans: list[tuple[int, int, str]], total: int | None) -> list[tuple[int, int]]:
    """Rows no span covers: from row 0, between spans, and up to `total` when it is known."""
    gaps, reached = [], 0
    for start, end, _ in spans:
        if start > reached:
            gaps.append((reached, start))
        reached = max(reached, end)
    if total is not None:
        gaps = [(start, min(end, total)) for start, end in gaps if start < total]
        if reached < total:
            gaps.append((reached, total))
    return gaps


def _overlaps(spans: list[tuple[int, int, str]], limit: int = 1000) -> list[tuple[int, int, str, str]]:
    """(start, end, one, other) for each pair of spans that share rows (sorted spans; at most `limit`)."""
    found: list[tuple[int, int, str, str]] = []
    active: list[tuple[int, int, str]] = []
    for start, end, who in spans:
        active = [span for span in active if span[1] > start]
        found += [(start, min(end, other_end), other, who) for _, other_end, other in active]
        if len(found) >= limit:
            return found[:limit]
        active.append((start, end, who))
    return found


def _rows(gaps: list[tuple[int, int]]) -> str:
    named = ", ".join(f"[{start}, {end})" for start, end in gaps[:MAX_LISTED])
    return named + (f" and {len(gaps) - MAX_LISTED} more gaps" if len(gaps) > MAX_LISTED else "")


def _listed_names(names: list[str]) -> str:
    return ", ".join(names[:MAX_LISTED]) + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _finished_worker_findings(layout: WorkerLayout, worker: Worker, shards: _WorkerShards) -> Iterator[Finding]:
    """GEN010 a done worker without its shard, GEN011 with a short one, GEN032 with failed inputs."""
    if worker.status != DONE or worker.outside or worker.problem:  # a damaged state is GEN030, nothing more
        return
    path = str(layout.folder / worker.state_files[0])
    if not worker.shards:
        if worker.declared_shard is None and not worker.has_range:
            yield NOT_JUDGED.finding(f"{worker.label} says done but names no shard and no range: its shard "
                                     f"cannot be looked for", path=path)
            return
        near = [s.name for s in layout.orphans if worker.has_range and s.start < worker.end and worker.start < s.end]
        if worker.declared_shard is None and near:  # another naming of the same rows: not a missing shard
            yield NOT_JUDGED.finding(
                f"{worker.label}{_span(worker)} {_says_done(worker)}; no shard is named for exactly its rows, and "
                f"which of {_listed_names([printable(n) for n in near])} is its own is not judged", path=path,
                hint="name the shard in the worker's state file (\"shard\": \"<file name>\")")
            return
        expected = (f"its shard {printable(worker.declared_shard)} is not" if worker.declared_shard is not None
                    else f"no shard named for rows [{worker.start}, {worker.end}) is")
        yield DONE_SHARD_MISSING.finding(
            f"{worker.label}{_span(worker)} {_says_done(worker)} but {expected} in the folder: a "
            f"resume skips it and {_inputs(worker)} are lost", path=path,
            hint='mark the worker not done ("status": "failed") so the resume reruns its range, or restore its shard')
        return
    units = shards.units(worker.shards)
    if isinstance(units, str):
        yield NOT_JUDGED.finding(f"{worker.label}'s shard {units}; whether it is complete is not judged", path=path)
        return
    if worker.has_range:
        yield from _short_shard(layout, worker, shards, units)
    failed = [key for key, (successes, failures) in units.items() if not successes and failures]
    if failed:
        yield FINISHED_WORKER_FAILURES.finding(
            f"{worker.label}{_span(worker)} says done but {len(failed)} `{shards.config.unit_field}` values of its "
            f"shard have only failed results (e.g. {_listed_names([printable(k) for k in failed])}): a resume that "
            f"skips finished workers never retries them", path=path,
            hint="mark the worker not done, or write the remaining work (`resumedoctor fix --auto`) and run it")


def _short_shard(layout: WorkerLayout, worker: Worker, shards: _WorkerShards,
                 units: dict[str, list[int]]) -> Iterator[Finding]:
    """A done worker owes one record (success or failure) per input of its range; fewer: some were never run."""
    records, without_key, unusable = shards.records(worker.shards)
    field_name = shards.config.unit_field
    if records and without_key == records:
        answered, counted = records, f"records (none has a `{field_name}` field: rows counted)"
    else:  # records without the field may each answer one more input: never say short for them
        answered, counted = len(units) + without_key, f"distinct `{field_name}` values"
    if answered >= worker.size:
        return
    lines = f" and {unusable} unusable lines" if unusable else ""
    yield DONE_SHARD_SHORT.finding(
        f"{worker.label} {_says_done(worker)} but {_listed_names([printable(n) for n in worker.shards])} "
        f"holds {answered} {counted}{lines} for the {worker.size} inputs of its range [{worker.start}, "
        f"{worker.end}): {worker.size - answered} inputs have no result, and a resume that skips finished "
        f"workers never runs them", path=str(layout.folder / worker.state_files[0]),
        hint='mark the worker not done ("status": "failed") so the resume reruns the inputs its shard lacks')


def _unfinished_findings(layout: WorkerLayout, shards: _WorkerShards) -> Iterator[Finding]:
    """GEN017: workers failed, running or not started, and the work their ranges still have."""
    workers = [w for w in layout.workers if w.status != DONE and not w.problem and not w.outside]
    if not workers:
        return
    parts, remaining = [], {}
    for worker in workers:
        units = shards.units(worker.shards)
        succeeded = None if isinstance(units, str) else sum(1 for successes, _ in units.values() if successes)
        held = "its shard is unreadable" if succeeded is None else f"{succeeded} of {worker.size} inputs succeeded"
        if succeeded is not None and worker.has_range:
            remaining[worker.key] = max(worker.size - succeeded, 0)
        parts.append(f"{worker.label}{_span(worker)} {worker.status_text}, {held}{_age(layout, worker)}")
    left = f": {sum(remaining.values())} inputs of their ranges have no successful result" if remaining else ""
    finding = WORKER_NOT_FINISHED.finding(
        f"{_count(len(workers), 'worker')} not finished ({'; '.join(parts[:MAX_LISTED])}"
        f"{'; ...' if len(parts) > MAX_LISTED else ''}){left}", path=str(layout.folder),
        hint="a state that says running may be a worker killed while it ran (nothing rewrote its state): "
             "if no process of the job is alive, resume it; it reruns these ranges and keeps what their shards hold")
    finding.extra["remaining"] = remaining
    yield finding


def _merge_findings(layout: WorkerLayout, shards: _WorkerShards) -> Iterator[Finding]:
    """GEN012 every worker done and nothing merged, GEN013 a merged file older than a shard or lacking results."""
    names = layout.shard_names
    if not layout.merged:
        workers = layout.workers
        if names and workers and all(w.status == DONE and w.shards and not w.problem for w in workers):
            stem = SHARD_RANGE_NAME.split(names[0])[0] or "results"
            yield SHARDS_NOT_MERGED.finding(
                f"all {len(workers)} workers are done but their {len(names)} shards are not merged (no "
                f"{printable(stem)}_merged{Path(names[0]).suffix} in the folder)", path=str(layout.folder),
                hint="merge them (`resumedoctor fix --auto`): one deduplicated file, a success winning over an error")
        return
    for name in layout.merged:
        yield from _stale_merged(layout, shards, name, names)


def _stale_merged(layout: WorkerLayout, shards: _WorkerShards, name: str, names: list[str]) -> Iterator[Finding]:
    path = layout.folder / name
    newer = [shard for shard in names if _mtime(layout.folder / shard) > _mtime(path)]
    # Per id when the records carry one: a task the merged file has one success of may still lack samples.
    by_id = shards.config.task_field is not None
    merged = shards.units([name], by_id)
    if by_id and not isinstance(merged, str) and not merged:
        by_id, merged = False, shards.units([name])
    if isinstance(merged, str):
        yield NOT_JUDGED.finding(f"the merged file {merged}; whether it holds the shards' results is not judged",
                                 path=str(path))
        return
    older = f" and is older than {_listed_names([printable(n) for n in newer])}" if newer else ""
    hint = "merge the shards again (`resumedoctor fix --auto`) before anything reads the merged file"
    held = shards.units(names, by_id)
    if isinstance(held, str):
        if newer:
            yield MERGED_STALE.finding(f"{printable(name)} is older than {_listed_names(newer)} (records not compared: "
                                       f"{held}): it may lack their newer results", path=str(path), hint=hint)
        return
    lacking = [key for key, (successes, _) in held.items() if successes and not merged.get(key, (0, 0))[0]]
    if lacking:
        yield MERGED_STALE.finding(
            f"{printable(name)} lacks a successful result for {len(lacking)} "
            f"`{shards.config.id_field if by_id else shards.config.unit_field}` values "
            f"the shards hold (e.g. {_listed_names([printable(k) for k in lacking])}){older}: whatever reads it "
            f"(training, a dataset build) runs without them", path=str(path), hint=hint)


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _age(layout: WorkerLayout, worker: Worker) -> str:
    """', last written N s ago': how long its state and shards have been still (a dead worker goes still)."""
    newest = max((_mtime(layout.folder / name) for name in (*worker.state_files, *worker.shards)), default=0)
    if not newest:
        return ""
    seconds = max(0, int(time.time() - newest / 1e9))
    return f", last written {_duration(seconds)} ago"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _span(worker: Worker) -> str:
    return f" [{worker.start}, {worker.end})" if worker.has_range else ""


def _inputs(worker: Worker) -> str:
    return f"the {worker.size} inputs of its range" if worker.has_range else "the inputs of its range"


def _says_done(worker: Worker) -> str:
    return "says done" if worker.status_text.lower() == "done" else f"says done ({worker.status_text})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
