"""Listeners' votes: which of two takes of the same text and voice a listener preferred, kept durably, and made into
the preference pairs of the next align iteration (`align.pairs=votes`) and into win rates (jobs/compare.py).

A take is one answer of the endpoint's POST /synthesize: the tokens the AR model wrote (`ar_tokens`, exactly what
the learner trains on), the prompt it wrote them after (`prompt_ids`), what spoke it (the registered model and
version, or the base, and the base's fingerprint, `sa_ray.lineage`) and how (seed, temperature, best_of and the
candidate kept). The endpoint keeps every take it speaks in the store and names it in the answer's `X-Take-Id`
header; a vote (POST /v1/votes) names two takes by those ids. So the tokens never travel through the listener's
page (which then cannot change what the model is trained on), and the WAV answer stays as it is. What is kept is
bounded: a take nobody voted on is dropped once it is older than `serve.take_ttl_seconds`, or beyond the newest
`MAX_TAKES`, as new takes arrive; a take a vote names is kept with the vote.

The store is one SQLite file (`serve.votes_path`, default <run_dir>/votes.sqlite), in WAL mode by default: every
replica of the endpoint writes it, each write one short `BEGIN IMMEDIATE` transaction (a writer waits up to
`BUSY_SECONDS` for another), and readers never wait for a writer. Its schema has a version (`PRAGMA user_version`):
a store of a newer schema is refused, named. A vote holds no identity of its voter (no address, token or cookie):
what was heard, in which order, and the verdict.

No Ray here: the endpoint (actors/voice_server.py) writes, the align pipeline (actors/pipeline.py) reads the pairs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sa_ray.bad_request import BadRequest
from sa_ray.metrics.stats import wilson_interval
from sa_ray.models.vocab import untag_prompt

SCHEMA_VERSION = 1
SIDES = ("a", "b")
VERDICTS = ("a", "b", "tie")
NATURALNESS = (1, 5)  # the optional naturalness score of a take, as a MOS scale
VOTE_FIELDS = ("a", "b", "first", "verdict", "naturalness_a", "naturalness_b")
TAKE_ID = re.compile(r"[0-9a-f]{32}")
MAX_TAKES = 20_000  # unvoted takes kept at most (the newest): a flood of requests cannot grow the file without bound
BUSY_SECONDS = 10.0  # how long a write waits for another replica's before it fails
VOTE_KEY = "vote-"  # a vote's pair is keyed (iteration, "vote-<id>", 0)

# what a take records, in the store's column order (the JSON lists are text columns)
TAKE_COLUMNS = (
    "id",
    "created",
    "text",
    "speaker",
    "model",
    "version",
    "base_fingerprint",
    "seed",
    "temperature",
    "best_of",
    "chosen",
    "ended",
    "ar_tokens",
    "prompt_ids",
)
SCHEMA = (
    """CREATE TABLE takes (
        id TEXT PRIMARY KEY,           -- the X-Take-Id: 32 random hex digits
        created REAL NOT NULL,         -- unix seconds, when it was spoken
        text TEXT NOT NULL,
        speaker TEXT,                  -- NULL: a cloned voice (prompt_wav); its prompt is its voice
        model TEXT,                    -- the registered model that spoke it; NULL: the base
        version TEXT NOT NULL,         -- as X-Policy-Version said: `base` or the version number
        base_fingerprint TEXT NOT NULL,
        seed INTEGER NOT NULL,         -- the request's; the candidate spoken sampled at seed + chosen
        temperature REAL NOT NULL,
        best_of INTEGER NOT NULL,
        chosen INTEGER NOT NULL,
        ended INTEGER NOT NULL,        -- 0: it hit its length limit before EOS
        ar_tokens TEXT NOT NULL,       -- JSON list: the AR target it wrote (what the learner trains on)
        prompt_ids TEXT NOT NULL,      -- JSON list: the AR prompt it wrote it after
        voted INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX takes_unvoted ON takes (voted, created)",
    """CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        created REAL NOT NULL,
        take_a TEXT NOT NULL REFERENCES takes (id),
        take_b TEXT NOT NULL REFERENCES takes (id),
        first TEXT NOT NULL CHECK (first IN ('a', 'b')),
        verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie')),
        naturalness_a INTEGER CHECK (naturalness_a BETWEEN 1 AND 5),
        naturalness_b INTEGER CHECK (naturalness_b BETWEEN 1 AND 5)
    )""",
)


class VotesError(FileNotFoundError):
    """A votes store that is missing, unreadable or of a newer schema, or holds no usable vote (a FileNotFoundError:
    jobs report it in one line)."""


@dataclass(frozen=True)
class Take:
    """One spoken answer of the endpoint, as the store keeps it."""

    text: str
    speaker: str | None
    model: str | None
    version: str
    base_fingerprint: str
    seed: int
    temperature: float
    best_of: int
    chosen: int
    ended: bool
    ar_tokens: tuple[int, ...]
    prompt_ids: tuple[int, ...]

    @classmethod
    def spoken(cls, request, best, version: str, model: str | None, base_fingerprint: str) -> Take:
        """The take of a `sa_ray.serve.SpeechRequest` answered with `best` (a `sa_ray.best_of.Best`) by `version`
        (X-Policy-Version) of the registered `model`."""
        return cls(
            request.text,
            request.speaker,
            None if version == "base" else model,
            version,
            base_fingerprint,
            request.seed,
            request.temperature,
            request.best_of,
            best.chosen,
            best.synthesis.ended,
            tuple(int(t) for t in best.synthesis.ar_tokens),
            tuple(int(t) for t in best.prompt_ids),
        )


# ------------------------------------------------------------------------------------------------ a vote's body


def parse_vote_body(raw: bytes) -> dict:
    """A POST /v1/votes body (bytes) -> the vote (`parse_vote`); not JSON is a BadRequest of status 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("body", "the body is not JSON", 400) from None
    return parse_vote(body)


def parse_vote(body: object) -> dict:
    """A decoded vote -> {a, b, first, verdict, naturalness_a, naturalness_b}; every rule broken is a BadRequest
    naming its field. Whether the takes exist and agree is the store's to say (`VoteStore.add_vote`)."""
    if not isinstance(body, dict):
        raise BadRequest(
            "body", f"must be a JSON object with fields {', '.join(VOTE_FIELDS)}; got {type(body).__name__}"
        )
    unknown = sorted(set(body) - set(VOTE_FIELDS))
    if unknown:
        raise BadRequest(unknown[0], f"unknown field; the fields are {', '.join(VOTE_FIELDS)}")
    for side in SIDES:
        take = body.get(side)
        if take is None:
            raise BadRequest(
                side, "is required: the X-Take-Id header of the /synthesize answer that spoke take " + side
            )
        if not isinstance(take, str) or not TAKE_ID.fullmatch(take):
            raise BadRequest(side, "must be a take id: the 32 hex digits of a /synthesize answer's X-Take-Id header")
    if body["a"] == body["b"]:
        raise BadRequest("b", "must be another take than a: a vote compares two takes")
    for name, allowed, what in (
        ("first", SIDES, "which take was played first (the page randomises the order)"),
        ("verdict", VERDICTS, "the take preferred, or tie"),
    ):
        if name not in body:
            raise BadRequest(name, f"is required: {what}, one of {', '.join(allowed)}")
        if not isinstance(body[name], str) or body[name] not in allowed:
            raise BadRequest(name, f"must be one of {', '.join(allowed)}: {what}")
    low, high = NATURALNESS
    for side in SIDES:
        score = body.get(f"naturalness_{side}")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not low <= score <= high):
            raise BadRequest(
                f"naturalness_{side}",
                f"must be an integer in [{low}, {high}] (how natural take {side} sounds), or absent",
            )
    return {name: body.get(name) for name in VOTE_FIELDS}


# ---------------------------------------------------------------------------------------------------- the store


class VoteStore:
    """The votes and the takes they name, in one SQLite file. Safe to share between threads and processes: every
    call opens its own connection, and every write is one `BEGIN IMMEDIATE` transaction."""

    def __init__(self, path: str | Path, journal: str = "wal", take_ttl: float = 3600.0):
        self.path, self.journal, self.take_ttl = Path(path), journal, take_ttl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)  # transactions spelled out
        db.row_factory = sqlite3.Row
        try:
            if write:
                db.execute("BEGIN IMMEDIATE")  # the write lock now: two replicas never both read, then both write
            yield db
            if write:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _open(self) -> None:
        """Creates the schema in a new file; refuses a file of a newer schema, or not SQLite at all."""
        try:
            with self._connect() as db:
                self._check_version(db)
                # persistent in the file; set before the first transaction (it cannot change inside one)
                mode = db.execute(f"PRAGMA journal_mode={self.journal}").fetchone()[0]
                if mode != self.journal:
                    raise VotesError(f"{self.path}: SQLite keeps journal mode {mode}, not {self.journal}")
                db.execute("BEGIN IMMEDIATE")
                if self._check_version(db) == 0:  # another replica may have made it meanwhile
                    for statement in SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # "file is not a database", a read-only file system, ...
            raise VotesError(f"{self.path}: not a votes store this sa-ray can open ({exc})") from None

    def _check_version(self, db: sqlite3.Connection) -> int:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise VotesError(
                f"{self.path}: a votes store of schema {version}, written by a newer sa-ray; this one reads schema "
                f"{SCHEMA_VERSION}"
            )
        return version

    def add_takes(self, takes: list[Take], now: float | None = None) -> list[str]:
        """Keeps spoken takes (one transaction for a batch's) and drops the unvoted ones past their time or beyond
        the newest MAX_TAKES; returns their ids (the X-Take-Id of each answer)."""
        now = time.time() if now is None else now
        ids = [uuid.uuid4().hex for _ in takes]  # unguessable: a vote names takes its listener heard
        rows = [
            (
                take_id,
                now,
                t.text,
                t.speaker,
                t.model,
                t.version,
                t.base_fingerprint,
                t.seed,
                t.temperature,
                t.best_of,
                t.chosen,
                int(t.ended),
                json.dumps(list(t.ar_tokens)),
                json.dumps(list(t.prompt_ids)),
            )
            for take_id, t in zip(ids, takes)
        ]
        with self._connect(write=True) as db:
            db.executemany(f"INSERT INTO takes ({', '.join(TAKE_COLUMNS)}) VALUES ({', '.join('?' * 14)})", rows)
            db.execute("DELETE FROM takes WHERE voted = 0 AND created < ?", (now - self.take_ttl,))
            db.execute(
                "DELETE FROM takes WHERE id IN "
                "(SELECT id FROM takes WHERE voted = 0 ORDER BY created DESC LIMIT -1 OFFSET ?)",
                (MAX_TAKES,),
            )
        return ids

    def add_vote(self, vote: dict, now: float | None = None) -> int:
        """Records a vote (`parse_vote`'s) on two takes kept here, of the same text and voice; returns its id.
        A take unknown or past `take_ttl` is a BadRequest naming its side."""
        now = time.time() if now is None else now
        with self._connect(write=True) as db:
            takes = {}
            for side in SIDES:
                row = db.execute("SELECT * FROM takes WHERE id = ?", (vote[side],)).fetchone()
                if row is None or (not row["voted"] and row["created"] < now - self.take_ttl):
                    raise BadRequest(
                        side,
                        f"no such take: unknown, or spoken more than serve.take_ttl_seconds ({self.take_ttl:g} s) "
                        "ago, its tokens no longer kept: speak it again",
                    )
                takes[side] = row
            a, b = takes["a"], takes["b"]
            if a["text"] != b["text"]:
                raise BadRequest("b", "was spoken from another text than take a: a vote compares two takes of one text")
            # a cloned voice is its prompt: the same recording gives the same prompt codes (tags aside)
            same_clone = a["speaker"] is None and _untagged(a["prompt_ids"]) == _untagged(b["prompt_ids"])
            if a["speaker"] != b["speaker"] or (a["speaker"] is None and not same_clone):
                raise BadRequest("b", "was spoken in another voice than take a: a vote compares two takes of one voice")
            db.execute("UPDATE takes SET voted = 1 WHERE id IN (?, ?)", (a["id"], b["id"]))
            cursor = db.execute(
                "INSERT INTO votes (created, take_a, take_b, first, verdict, naturalness_a, naturalness_b) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, a["id"], b["id"], vote["first"], vote["verdict"], vote["naturalness_a"], vote["naturalness_b"]),
            )
            return cursor.lastrowid

    def votes(self) -> list[dict]:
        """Every vote with both its takes, oldest first (`vote_dict`'s shape, the JSON export's)."""
        takes = ", ".join(f"{side}.{c} AS {side}_{c}" for side in SIDES for c in TAKE_COLUMNS)
        with self._connect() as db:
            rows = db.execute(
                f"SELECT v.*, {takes} FROM votes v JOIN takes a ON a.id = v.take_a JOIN takes b ON b.id = v.take_b "
                "ORDER BY v.id"
            ).fetchall()
        return [vote_dict(dict(row)) for row in rows]

    def count_takes(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT count(*) FROM takes").fetchone()[0]


def _untagged(prompt_json: str) -> list[int]:
    return untag_prompt(json.loads(prompt_json))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def vote_dict(row: dict) -> dict:
    """A row of `VoteStore.votes`' query -> {id, time, text, speaker, first, verdict, a: take, b: take}, each take
    {take, time, model, version, base_fingerprint, seed, temperature, best_of, chosen, ended, naturalness,
    ar_tokens, prompt_ids}."""

    def take(side: str) -> dict:
        t = {c: row[f"{side}_{c}"] for c in TAKE_COLUMNS}
        return {
            "take": t["id"],
            "time": _iso(t["created"]),
            "model": t["model"],
            "version": t["version"],
            "base_fingerprint": t["base_fingerprint"],
            "seed": t["seed"],
            "temperature": t["temperature"],
            "best_of": t["best_of"],
            "chosen": t["chosen"],
            "ended": bool(t["ended"]),
            "naturalness": row[f"naturalness_{side}"],
            "ar_tokens": json.loads(t["ar_tokens"]),
            "prompt_ids": json.loads(t["prompt_ids"]),
        }

    return {
        "id": row["id"],
        "time": _iso(row["created"]),
        "text": row["a_text"],
        "speaker": row["a_speaker"],
        "first": row["first"],
        "verdict": row["verdict"],
        "a": take("a"),
        "b": take("b"),
    }


# ------------------------------------------------------------------------------------------------------- export

TAKE_FIELDS = (
    "take",
    "time",
    "model",
    "version",
    "base_fingerprint",
    "seed",
    "temperature",
    "best_of",
    "chosen",
    "ended",
    "naturalness",
    "ar_tokens",
    "prompt_ids",
)
CSV_COLUMNS = ("id", "time", "text", "speaker", "first", "verdict", *(f"{s}_{k}" for s in SIDES for k in TAKE_FIELDS))


def to_json(votes: list[dict]) -> str:
    """The JSON export: {"schema": 1, "votes": [...]} (what `load_votes` reads back, `align.votes_path=<file>.json`)."""
    return json.dumps({"schema": SCHEMA_VERSION, "votes": votes})


def to_csv(votes: list[dict]) -> str:
    """The CSV export: one row a vote, each take's fields prefixed a_ and b_; token lists as JSON arrays."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for v in votes:
        row = {k: v[k] for k in CSV_COLUMNS[:6]}
        for side in SIDES:
            for k in TAKE_FIELDS:
                value = v[side][k]
                row[f"{side}_{k}"] = json.dumps(value) if isinstance(value, list) else value
        writer.writerow(row)
    return out.getvalue()


def load_votes(path: str | Path) -> list[dict]:
    """The votes of a store (a SQLite file the endpoint writes) or of its JSON export; VotesError when there is
    neither at `path`."""
    path = Path(path)
    if not path.is_file():
        raise VotesError(
            f"no votes store at {path}: serve (python -m jobs.serve) and vote on its takes (POST /v1/votes), or set "
            "align.votes_path to a store or its JSON export"
        )
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("votes"), list):
            raise VotesError(f"{path}: not a votes export (GET /v1/votes?format=json): no `votes` list")
        if data.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise VotesError(f"{path}: a votes export of schema {data['schema']}; this sa-ray reads {SCHEMA_VERSION}")
        return data["votes"]
    return VoteStore(path).votes()


def store_path(cfg) -> Path:
    """The endpoint's votes store: serve.votes_path, else <run_dir>/votes.sqlite."""
    return Path(cfg.serve.votes_path or Path(cfg.run_dir) / "votes.sqlite")


def align_source(cfg) -> Path:
    """Where align.pairs=votes reads the votes: align.votes_path, else the endpoint's store."""
    return Path(cfg.align.votes_path) if cfg.align.votes_path else store_path(cfg)


# ------------------------------------------------------------------------------------------------- votes -> pairs

LEFT_OUT = {  # why a vote gives no pair, as the summary says it
    "tie": "ties",
    "other_base": "with a take spoken on another base model",
    "prompted_differently": "whose takes were prompted differently (another voice crop: another seed)",
    "same_tokens": "whose takes wrote the same tokens",
    "used": "made into pairs by an earlier iteration",
}


@dataclass
class VotePairs:
    """The pairs an iteration makes of the votes, and what was left out, by reason (LEFT_OUT)."""

    rows: list[dict]
    read: int
    left_out: dict[str, int] = field(default_factory=dict)

    def summary(self, source: str | Path) -> str:
        skipped = "; ".join(f"{n} {LEFT_OUT[why]}" for why, n in self.left_out.items() if n)
        return f"votes: {self.read} in {source}, {len(self.rows)} new pairs" + (
            f"; left out: {skipped}" if skipped else ""
        )

    def stats(self) -> dict:
        """What the pair set's manifest records of them."""
        return {"votes_read": self.read, "vote_pairs": len(self.rows), "votes_left_out": dict(self.left_out)}


def vote_key(vote_id: int) -> str:
    return f"{VOTE_KEY}{vote_id}"


def vote_pairs(votes: Iterable[dict], base_fingerprint: str, iteration: int, used: Iterable[int] = ()) -> VotePairs:
    """One pair per vote A > B (or B > A): chosen = the preferred take's tokens, rejected = the other's, prompt = the
    prompt both were written after (without a Chain-of-Hindsight tag: the pipeline asks as this run's policy is
    prompted), keyed (iteration, "vote-<id>", 0). No pair from a tie, from takes spoken on another base than
    `base_fingerprint` (their tokens mean nothing to this one), from takes prompted differently (two seeds crop two
    voice prompts: no one prompt both were written after), from two takes that wrote the same tokens, or from a vote
    in `used` (made into pairs by an earlier iteration of the run)."""
    used, rows, read = set(used), [], 0
    left_out = dict.fromkeys(LEFT_OUT, 0)
    for v in votes:
        read += 1
        a, b = v["a"], v["b"]
        prompt = untag_prompt(a["prompt_ids"])
        if v["verdict"] == "tie":
            why = "tie"
        elif {a["base_fingerprint"], b["base_fingerprint"]} != {base_fingerprint}:
            why = "other_base"
        elif prompt != untag_prompt(b["prompt_ids"]):
            why = "prompted_differently"
        elif list(a["ar_tokens"]) == list(b["ar_tokens"]):
            why = "same_tokens"
        elif v["id"] in used:
            why = "used"
        else:
            chosen, rejected = (a, b) if v["verdict"] == "a" else (b, a)
            rows.append(
                {
                    "iteration": iteration,
                    "utt_id": vote_key(v["id"]),
                    "sample_idx": 0,
                    "prompt_ids": prompt,
                    "chosen_ids": [int(t) for t in chosen["ar_tokens"]],
                    "rejected_ids": [int(t) for t in rejected["ar_tokens"]],
                }
            )
            continue
        left_out[why] += 1
    return VotePairs(rows, read, left_out)


def used_votes(utt_ids: Iterable[str]) -> set[int]:
    """The vote ids among pair keys' utt_ids (an earlier pair set's)."""
    return {int(u.removeprefix(VOTE_KEY)) for u in utt_ids if u.startswith(VOTE_KEY)}


# -------------------------------------------------------------------------------------------------- win rates


@dataclass(frozen=True)
class WinRate:
    """How often A's take was preferred to B's: `rate` = (wins_a + ties / 2) / n, [lo, hi] its Wilson interval."""

    a: str
    b: str
    n: int
    wins_a: int
    wins_b: int
    ties: int
    rate: float
    lo: float
    hi: float


def take_label(take: dict, with_base: bool = False) -> str:
    """`base` or `<model> v<version>`; with the base's fingerprint when votes of several bases are compared."""
    label = "base" if take["version"] == "base" else f"{take['model']} v{take['version']}"
    return f"{label} @{take['base_fingerprint'][:8]}" if with_base else label


def _newness(take: dict) -> tuple:
    version = str(take["version"])
    return (version != "base", take["model"] or "", int(version) if version.isdigit() else -1, version)


def win_rates(votes: list[dict], level: float = 0.95) -> list[WinRate]:
    """Per pair of versions (A the newer: a version before the base, a higher number before a lower), how often a
    listener preferred A: ties count half a win for each side (and are reported apart), the interval is Wilson's
    (`sa_ray.metrics.stats.wilson_interval`). Votes between two takes of one version compare no versions: left out."""
    with_base = len({t["base_fingerprint"] for v in votes for t in (v["a"], v["b"])}) > 1
    counts: dict[tuple[str, str], list[int]] = {}
    for v in votes:
        labels = {side: take_label(v[side], with_base) for side in SIDES}
        if labels["a"] == labels["b"]:
            continue
        newer, older = sorted(SIDES, key=lambda s: _newness(v[s]), reverse=True)
        wins = counts.setdefault((labels[newer], labels[older]), [0, 0, 0])
        wins[{newer: 0, older: 1, "tie": 2}[v["verdict"]]] += 1
    out = []
    for (a, b), (wins_a, wins_b, ties) in counts.items():
        n = wins_a + wins_b + ties
        lo, hi = wilson_interval(wins_a + ties / 2, n, level)
        out.append(WinRate(a, b, n, wins_a, wins_b, ties, (wins_a + ties / 2) / n, lo, hi))
    return sorted(out, key=lambda w: (w.a, w.b))


def format_rate(w: WinRate) -> str:
    return f"{w.rate:.2f} [{w.lo:.2f}, {w.hi:.2f}]"
