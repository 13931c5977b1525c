"""GEN: can a generation / inference job resume from its result ledger without losing or redoing work?

The target is a results file (JSONL, JSON, CSV, Parquet, an inference `checkpoint.json`) or a folder of
worker shards and their state files (engine/target.py, integrations/ledger/layout.py); how to read it is
the LedgerConfig (flags over `[tool.resumedoctor.ledger]`). Only successes count as done.
"""

from __future__ import annotations

from collections.abc import Iterator

from resumedoctor.engine.context import LEDGER_SUMMARY, RunContext
from resumedoctor.engine.findings import Finding, Rule, Severity
from resumedoctor.engine.registry import CheckFamily
from resumedoctor.integrations.ledger.config import LedgerConfig

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

# --- the records of one file (GEN001-007, GEN014-016, GEN018-019; GEN020-029 free for more) ---------
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
         WORKER_NOT_FINISHED, FAILURE_RECORDS, ERRORS_COUNTED_AS_SUCCESS)


def config_of(ctx: RunContext) -> LedgerConfig:
    """How to read this ledger: the options' LedgerConfig, else the defaults."""
    return ctx.options.ledger if ctx.options.ledger is not None else LedgerConfig()


def record_findings(ctx: RunContext) -> Iterator[Finding]:
    """GEN001-007, GEN014-016, GEN018-019: the records of the results file(s)."""
    return iter(())


def worker_findings(ctx: RunContext) -> Iterator[Finding]:
    """GEN008-013, GEN017: worker ranges, their state files and shards, the merged file."""
    return iter(())


def ledger_summary(ctx: RunContext) -> dict:
    """The work left as plain data for the report: the per-task table and the totals."""
    return {"unit": config_of(ctx).unit_field, "quota": config_of(ctx).quota, "tasks": [], "work_left": None}


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
