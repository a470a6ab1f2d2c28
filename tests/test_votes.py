"""The listeners' votes (sa_ray/votes.py): the store (round trip, WAL, a restart, exports, bounds, several writers at
once), a vote's rules, votes -> preference pairs, win rates and their interval, the align.pairs settings, jobs.compare's
win-rate table; and the /v1/votes routes as Serve builds them, over the stand-in replica (no Ray)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sa_ray import votes
from sa_ray.bad_request import BadRequest
from sa_ray.config import ConfigError, load_config
from sa_ray.metrics.stats import wilson_interval
from sa_ray.models.vocab import BOS, SEP, SPEECH, tag_prompt
from sa_ray.votes import Take, VoteStore

from .conftest import REPO

BASE = "0123456789abcdef"  # the fingerprint of the base the hand-made takes were spoken on
PROMPT = (BOS, 10, 11, 12, SEP, 40, 41, 42, SPEECH)  # [BOS] text [SEP] voice-prompt codes [SPEECH]
TEXT = "The cat sat on the mat."


def _take(tokens=(50, 51, 52, 2), prompt=PROMPT, **fields) -> Take:
    made = dict(
        text=TEXT,
        speaker="mbrola-us1",
        model=None,
        version="base",
        base_fingerprint=BASE,
        seed=0,
        temperature=1.0,
        best_of=1,
        chosen=0,
        ended=True,
        ar_tokens=tuple(tokens),
        prompt_ids=tuple(prompt),
    )
    return Take(**{**made, **fields})


def _vote(a: str, b: str, verdict: str = "a", first: str = "a", **scores) -> dict:
    return votes.parse_vote({"a": a, "b": b, "first": first, "verdict": verdict, **scores})


def test_the_store_keeps_votes_across_a_restart_and_exports_them(tmp_path):
    path = tmp_path / "votes.sqlite"
    store = VoteStore(path)
    a, b = store.add_takes(
        [_take(), _take((50, 53, 2), model="tiny-policy", version="3", seed=7, temperature=0.5, best_of=2, chosen=1)],
        now=1000.0,
    )
    assert votes.TAKE_ID.fullmatch(a) and a != b
    vote_id = store.add_vote(_vote(a, b, "b", first="b", naturalness_a=2, naturalness_b=5), now=1010.5)
    with sqlite3.connect(path) as db:  # WAL on, and the schema's version in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == votes.SCHEMA_VERSION

    (cast,) = VoteStore(path).votes()  # a new store on the file: what a restarted replica reads
    assert {k: cast[k] for k in ("id", "time", "text", "speaker", "first", "verdict")} == {
        "id": vote_id,
        "time": "1970-01-01T00:16:50.500Z",
        "text": TEXT,
        "speaker": "mbrola-us1",
        "first": "b",
        "verdict": "b",
    }
    assert cast["a"] == {
        "take": a,
        "time": "1970-01-01T00:16:40.000Z",
        "model": None,
        "version": "base",
        "base_fingerprint": BASE,
        "seed": 0,
        "temperature": 1.0,
        "best_of": 1,
        "chosen": 0,
        "ended": True,
        "naturalness": 2,
        "ar_tokens": [50, 51, 52, 2],
        "prompt_ids": list(PROMPT),
    }
    assert cast["b"]["model"] == "tiny-policy" and cast["b"]["version"] == "3" and cast["b"]["ar_tokens"] == [50, 53, 2]
    assert (cast["b"]["seed"], cast["b"]["best_of"], cast["b"]["chosen"], cast["b"]["naturalness"]) == (7, 2, 1, 5)

    exported = tmp_path / "votes.json"  # the JSON export reads back as the store does (align.votes_path=<it>)
    exported.write_text(votes.to_json(VoteStore(path).votes()))
    assert votes.load_votes(exported) == votes.load_votes(path) == [cast]
    (row,) = csv.DictReader(io.StringIO(votes.to_csv([cast])))
    assert list(row) == list(votes.CSV_COLUMNS)
    assert (row["id"], row["verdict"], row["a_take"], row["b_version"], row["b_naturalness"]) == (
        str(vote_id),
        "b",
        a,
        "3",
        "5",
    )
    assert json.loads(row["a_ar_tokens"]) == [50, 51, 52, 2] and json.loads(row["b_prompt_ids"]) == list(PROMPT)


def test_a_store_that_is_not_one_this_sa_ray_reads_is_refused_named(tmp_path):
    newer = tmp_path / "newer.sqlite"
    VoteStore(newer)
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(votes.VotesError, match="a votes store of schema 9, written by a newer sa-ray"):
        VoteStore(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database, but long enough to have a header" * 40)
    with pytest.raises(votes.VotesError, match="junk.sqlite: not a votes store"):
        VoteStore(junk)
    with pytest.raises(votes.VotesError, match="no votes store at .*missing.sqlite"):
        votes.load_votes(tmp_path / "missing.sqlite")


TAKE_A, TAKE_B = "a" * 32, "b" * 32


@pytest.mark.parametrize(
    "body, field, status",
    [
        (b"{", "body", 400),
        (b"[1]", "body", 422),
        (b'{"a": 1}', "a", 422),
        ({"b": TAKE_B, "first": "a", "verdict": "a"}, "a", 422),
        ({"a": "not-a-take", "b": TAKE_B, "first": "a", "verdict": "a"}, "a", 422),
        ({"a": TAKE_A, "b": TAKE_A.upper(), "first": "a", "verdict": "a"}, "b", 422),
        ({"a": TAKE_A, "b": TAKE_A, "first": "a", "verdict": "a"}, "b", 422),
        ({"a": TAKE_A, "b": TAKE_B, "verdict": "a"}, "first", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "c", "verdict": "a"}, "first", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "a"}, "verdict", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "a", "verdict": "both"}, "verdict", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "a", "verdict": "a", "naturalness_a": 6}, "naturalness_a", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "a", "verdict": "a", "naturalness_b": True}, "naturalness_b", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "a", "verdict": "a", "naturalness_b": 2.5}, "naturalness_b", 422),
        ({"a": TAKE_A, "b": TAKE_B, "first": "a", "verdict": "a", "voter": "me"}, "voter", 422),
    ],
)
def test_a_bad_vote_is_refused_naming_its_field(body, field, status):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(BadRequest) as refused:
        votes.parse_vote_body(raw)
    assert (refused.value.field, refused.value.status) == (field, status), refused.value.message
    assert refused.value.body() == {"error": refused.value.message, "field": field}


def test_a_vote_names_two_kept_takes_of_one_text_and_voice(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite", take_ttl=60)
    old, a, b, other_text, other_voice, clone, same_clone, other_clone = (
        store.add_takes([_take()], now=0.0)
        + store.add_takes(
            [
                _take(),
                _take(),
                _take(text="Another sentence."),
                _take(speaker="mbrola-us2"),
                _take(speaker=None),
                _take(speaker=None, prompt=tag_prompt(list(PROMPT), "good")),  # a CoH version's take of the same clone
                _take(speaker=None, prompt=(*PROMPT[:5], 43, 44, 45, SPEECH)),  # another recording
            ],
            now=100.0,
        )
    )

    def refused(x: str, y: str) -> tuple[str, str]:
        with pytest.raises(BadRequest) as no:
            store.add_vote(_vote(x, y), now=100.0)
        return no.value.field, no.value.message

    assert refused("f" * 32, b)[0] == "a"
    assert refused(a, old) == (
        "b",
        "no such take: unknown, or spoken more than serve.take_ttl_seconds (60 s) ago, its tokens no longer kept: "
        "speak it again",
    )
    assert refused(a, other_text) == (
        "b",
        "was spoken from another text than take a: a vote compares two takes of one text",
    )
    assert refused(a, other_voice)[1].startswith("was spoken in another voice than take a")
    assert refused(clone, other_clone)[1].startswith("was spoken in another voice than take a")
    assert store.add_vote(_vote(a, b), now=100.0) == 1
    assert store.add_vote(_vote(clone, same_clone, "tie"), now=100.0) == 2
    assert store.add_vote(_vote(b, a, "b"), now=100.0) == 3  # the same takes again (another listener)
    assert [v["verdict"] for v in store.votes()] == ["a", "tie", "b"]


def test_unvoted_takes_are_dropped_after_their_time_and_beyond_the_newest_few(tmp_path, monkeypatch):
    store = VoteStore(tmp_path / "votes.sqlite", take_ttl=60)
    a, b = store.add_takes([_take(), _take()], now=0.0)
    store.add_vote(_vote(a, b), now=30.0)
    store.add_takes([_take()], now=10.0)
    assert store.count_takes() == 3
    store.add_takes([_take()], now=100.0)  # the unvoted one of t=10 is past its minute; the voted two stay
    assert store.count_takes() == 3 and len(store.votes()) == 1
    monkeypatch.setattr(votes, "MAX_TAKES", 2)
    older = store.add_takes([_take(), _take()], now=110.0)
    newest = store.add_takes([_take(), _take()], now=120.0)
    assert store.count_takes() == 2 + 2  # the voted two and the newest two unvoted
    with pytest.raises(BadRequest):
        store.add_vote(_vote(*older), now=120.0)
    assert store.add_vote(_vote(*newest), now=120.0) == 2 and store.votes()[0]["a"]["take"] == a


def _write_votes(path: str, worker: int, n: int) -> None:
    store = VoteStore(path)  # each "replica" its own connection, after the fork
    for k in range(n):
        a, b = store.add_takes([_take(seed=worker), _take(seed=worker, tokens=(50, 54, 2))])
        store.add_vote(_vote(a, b, "ab"[k % 2]))


def test_replicas_write_one_store_at_once(tmp_path):
    path = str(tmp_path / "votes.sqlite")
    VoteStore(path)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_votes, args=(path, w, 15)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0] * 4
    cast = VoteStore(path).votes()
    assert len(cast) == 60 and sorted(v["id"] for v in cast) == list(range(1, 61))
    assert sorted(v["a"]["seed"] for v in cast) == sorted([w for w in range(4) for _ in range(15)])


def _cast(vote_id: int, verdict: str, a: dict | None = None, b: dict | None = None) -> dict:
    """A vote as the store reads it back, of two takes of the base at seed 0 unless `a` or `b` say otherwise."""
    take = {"model": None, "version": "base", "base_fingerprint": BASE, "prompt_ids": list(PROMPT)}
    return {
        "id": vote_id,
        "verdict": verdict,
        "a": {**take, "ar_tokens": [50, 51, 2], **(a or {})},
        "b": {**take, "ar_tokens": [50, 52, 52, 2], **(b or {})},
    }


def test_votes_become_pairs_of_the_preferred_take_over_the_other():
    cast = [
        _cast(1, "a"),
        _cast(2, "b", a={"prompt_ids": tag_prompt(list(PROMPT), "good")}),  # a CoH version's take: the tag is no change
        _cast(3, "tie"),
        _cast(4, "a", b={"base_fingerprint": "ffffffffffffffff"}),
        _cast(5, "a", b={"prompt_ids": [*PROMPT[:5], 43, 44, 45, SPEECH]}),  # another seed's voice crop
        _cast(6, "b", b={"ar_tokens": [50, 51, 2]}),
        _cast(7, "b"),  # an earlier iteration made it a pair already
    ]
    made = votes.vote_pairs(cast, BASE, iteration=2, used={7, 99})
    assert made.rows == [
        {
            "iteration": 2,
            "utt_id": "vote-1",
            "sample_idx": 0,
            "prompt_ids": list(PROMPT),
            "chosen_ids": [50, 51, 2],
            "rejected_ids": [50, 52, 52, 2],
        },
        {
            "iteration": 2,
            "utt_id": "vote-2",
            "sample_idx": 0,
            "prompt_ids": list(PROMPT),
            "chosen_ids": [50, 52, 52, 2],
            "rejected_ids": [50, 51, 2],
        },
    ]
    assert made.read == 7
    assert made.left_out == {"tie": 1, "other_base": 1, "prompted_differently": 1, "same_tokens": 1, "used": 1}
    assert made.summary("votes.sqlite") == (
        "votes: 7 in votes.sqlite, 2 new pairs; left out: 1 ties; 1 with a take spoken on another base model; 1 whose "
        "takes were prompted differently (another voice crop: another seed); 1 whose takes wrote the same tokens; 1 "
        "made into pairs by an earlier iteration"
    )
    assert made.stats()["vote_pairs"] == 2
    assert votes.used_votes(["vote-1", "utt-0003", "vote-12"]) == {1, 12}


def test_win_rates_count_ties_half_with_a_wilson_interval():
    v3 = {"model": "tiny-policy", "version": "3"}
    v10 = {"model": "tiny-policy", "version": "10"}
    cast = (
        [_cast(i, "a", a=v3) for i in range(6)]  # v3 preferred to the base 6 times
        + [_cast(i, "a", b=v3) for i in range(2)]  # the base (take a) preferred twice
        + [_cast(i, "tie", b=v3) for i in range(2)]
        + [_cast(20, "b", a=v3, b=v10)]
        + [_cast(21, "a", a=v3, b=v3)]  # one version against itself: no comparison
    )
    (newer, base) = votes.win_rates(cast)
    assert (newer.a, newer.b, newer.n, newer.wins_a, newer.wins_b, newer.ties) == (
        "tiny-policy v10",
        "tiny-policy v3",
        1,
        1,
        0,
        0,
    )
    assert (base.a, base.b, base.n, base.wins_a, base.wins_b, base.ties) == ("tiny-policy v3", "base", 10, 6, 2, 2)
    assert base.rate == 0.7 and (base.lo, base.hi) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert votes.format_rate(base) == "0.70 [0.40, 0.89]"
    # Wilson's interval at hand counts (Newcombe 1998's table: 81/263 -> [0.2553, 0.3662])
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-4)  # where a bootstrap says [1, 1]
    assert wilson_interval(0, 3)[0] == 0.0
    with pytest.raises(ValueError, match="at least one vote"):
        wilson_interval(0, 0)
    # several bases in one store: each label names its base
    other = _cast(30, "a", a={**v3, "base_fingerprint": "ffffffffffffffff"})
    assert {w.a for w in votes.win_rates([*cast, other])} >= {"tiny-policy v3 @ffffffff"}


def test_align_pairs_with_votes_are_checked():
    config = str(REPO / "configs" / "tiny.yaml")
    for pairs in ("votes", "golden+votes", "ranked+votes"):
        a = load_config(config, [f"align.pairs={pairs}", "align.samples_per_prompt=2"]).align
        assert a.uses_votes and a.rollout_pairs == {"votes": None}.get(pairs, pairs.removesuffix("+votes"))
    assert load_config(config, ["align.pairs=ranked+votes", "align.samples_per_prompt=2"]).align.rewards_samples
    assert not load_config(config, ["align.pairs=votes"]).align.rewards_samples
    with pytest.raises(ConfigError, match="align.pairs must be golden, ranked, corrections, votes, golden.votes or"):
        load_config(config, ["align.pairs=corrections+votes"])
    with pytest.raises(ConfigError, match="a vote's takes have no golden target"):
        load_config(config, ["align.pairs=ranked+votes", "align.samples_per_prompt=2", "align.nll_target=golden"])
    with pytest.raises(ConfigError, match="align.pairs=ranked needs align.samples_per_prompt >= 2"):
        load_config(config, ["align.pairs=ranked+votes"])
    with pytest.raises(ConfigError, match="serve.votes_journal must be wal or delete"):
        load_config(config, ["serve.votes_journal=memory"])
    cfg = load_config(config, ["run_dir=runs/x"])
    assert votes.store_path(cfg) == votes.align_source(cfg) == Path("runs/x/votes.sqlite")
    cfg = load_config(config, ["run_dir=runs/x", "serve.votes_path=/v/s.sqlite"])
    assert str(votes.align_source(cfg)) == "/v/s.sqlite"
    cfg = load_config(config, ["serve.votes_path=/v/s.sqlite", "align.votes_path=/v/export.json"])
    assert str(votes.align_source(cfg)) == "/v/export.json"


def test_compare_reports_each_version_pairs_win_rate(tmp_path, capsys):
    import mlflow

    from jobs import compare
    from sa_ray import tracking

    overrides = [f"tracking.uri=sqlite:///{tmp_path}/m.db", f"run_dir={tmp_path}/run"]
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), overrides)
    with tracking.job_run(cfg, "align"):
        mlflow.set_tags({"sa_ray.method": "rpo", "sa_ray.asr_backend": "pocketsphinx-domain"})
        tracking.log_metrics({"heldout_sentences_wer": 0.5}, step=0)
    v1 = {"model": "tiny-policy", "version": "1"}
    exported = tmp_path / "votes.json"
    exported.write_text(json.dumps({"schema": 1, "votes": [_cast(1, "a", a=v1), _cast(2, "tie", b=v1)]}))
    out = compare.main(["--config", str(REPO / "configs" / "tiny.yaml"), "--votes", str(exported), *overrides])
    (rate,) = out["win_rates"]
    assert (rate.a, rate.b, rate.n, rate.wins_a, rate.ties, rate.rate) == ("tiny-policy v1", "base", 2, 1, 1, 0.75)
    assert "| tiny-policy v1 vs base | 2 | 1 | 0 | 1 | 0.75 [0." in out["markdown"]
    (row,) = csv.DictReader(open(tmp_path / "run" / "compare" / "win_rates.csv"))
    assert (row["a"], row["n"], float(row["rate"])) == ("tiny-policy v1", "2", 0.75)
    # without --votes: the run's store, when there is one; none here, so no section
    assert "win rates" not in compare.main(["--config", str(REPO / "configs" / "tiny.yaml"), *overrides])["markdown"]


# ------------------------------------------------------------------------------------------- the routes


def _http(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_vote_routes_record_and_export_votes_behind_the_token(tmp_path):
    from .test_serve_routes import stub_server

    path = tmp_path / "votes.sqlite"
    a, b, other = VoteStore(path).add_takes([_take(), _take((50, 2)), _take(text="Another one.")])
    token = "s3cret"
    with stub_server({"votes_path": str(path), "auth_token": token}) as url:
        assert _http(f"{url}/v1/votes", {"a": a, "b": b, "first": "a", "verdict": "a"})[0] == 401
        assert _http(f"{url}/v1/votes")[0] == 401
        status, _, body = _http(f"{url}/v1/votes", {"a": a, "b": b, "first": "b", "verdict": "b"}, token)
        assert (status, json.loads(body)) == (201, {"id": 1})
        status, headers, body = _http(f"{url}/v1/votes", {"a": a, "b": other, "first": "a", "verdict": "a"}, token)
        assert (status, json.loads(body)["field"]) == (422, "b") and headers["content-type"] == "application/json"
        status, _, body = _http(f"{url}/v1/votes", {"a": a, "b": b, "first": "a", "verdict": "x"}, token)
        assert (status, json.loads(body)["field"]) == (422, "verdict")
        status, headers, body = _http(f"{url}/v1/votes?format=json", token=token)
        assert status == 200 and headers["content-type"] == "application/json"
        (cast,) = json.loads(body)["votes"]
        assert (cast["verdict"], cast["a"]["take"], cast["b"]["ar_tokens"]) == ("b", a, [50, 2])
        status, headers, body = _http(f"{url}/v1/votes?format=csv", token=token)
        assert status == 200 and headers["content-type"].startswith("text/csv")
        assert next(csv.DictReader(io.StringIO(body.decode())))["b_take"] == b
        status, _, body = _http(f"{url}/v1/votes?format=xml", token=token)
        assert (status, json.loads(body)["field"]) == (422, "format")


def test_an_iteration_takes_the_votes_no_earlier_pair_set_of_the_run_holds(tmp_path, capsys):
    """actors.align_stages.vote_pairs: the votes of a run's earlier pair sets are not made pairs again; with none
    new, align.pairs=votes stops, naming why (golden+votes goes on with its golden pairs)."""
    import types

    import pandas as pd

    from actors.align_stages import vote_pairs
    from sa_ray.align_run import AlignRun
    from sa_ray.preference import commit_pairs

    store = VoteStore(tmp_path / "run" / "votes.sqlite")
    for _ in range(3):
        store.add_vote(_vote(*store.add_takes([_take(), _take((50, 2))])))
    run = AlignRun(tmp_path / "run")
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), [f"run_dir={tmp_path / 'run'}", "align.pairs=votes"])
    loop = types.SimpleNamespace(cfg=cfg, run=run, lineage={"base_fingerprint": BASE})

    first = vote_pairs(loop, 0)
    assert [r["utt_id"] for r in first.rows] == ["vote-1", "vote-2", "vote-3"]
    staging = tmp_path / "staging"
    staging.mkdir()
    pd.DataFrame(first.rows[:2]).to_parquet(staging / "part-0.parquet")  # iteration 0 committed two of them
    commit_pairs(staging, run.pairs(0), {})
    assert [r["utt_id"] for r in vote_pairs(loop, 1).rows] == ["vote-3"]
    assert "3 in " in capsys.readouterr().out

    staging = tmp_path / "staging1"
    staging.mkdir()
    pd.DataFrame(first.rows[2:]).to_parquet(staging / "part-0.parquet")
    commit_pairs(staging, run.pairs(1), {})
    with pytest.raises(votes.VotesError, match="align.pairs=votes: no new vote to learn from for iteration 2 .*3 made"):
        vote_pairs(loop, 2)
    cfg.align.pairs = "golden+votes"
    assert vote_pairs(loop, 2).rows == []
