"""The align loop's stages, each a function of the loop's long-lived state (`Loop`) with its inputs and outputs in
the open, composed into a policy version by `make_version` (roll_out, learn) and `finish_version` (the waited-for
Evaluation, publish); jobs/align.py schedules versions, each evaluation beside the next version's making:

    roll_out(i)  pairs sampled from policy version i, scored by the reference       -> pair set i (committed)
                 (ppo: valued by critic version i: values, advantages, returns)
    learn(k)     version k from version k-1 and pair set k-1, on Ray Train          -> adapter v_k (committed)
                 (ppo: beside it, critic v_k from critic v_{k-1} in the critic role  -> critic v_k (committed))
    Evaluation   held-out metrics of version k, paired with the base's, gap, wavs   -> metrics
                 (started, then waited for: it runs beside version k+1's roll_out and learn)
    publish(k)   metrics to MLflow; v_k registered as <name>-policy (latest, best)  -> registry version

A new method is another composition of these (and of new stages), not a branch inside the loop.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
import ray

from actors.learner import fit_learner
from actors.pipeline import make_pairs
from actors.usage import peak_rss_mb
from sa_ray import atomic, guards, lineage, tracking, votes
from sa_ray.align_run import AlignRun, settings_changes
from sa_ray.config import Config
from sa_ray.metrics.stats import record_wer_changes
from sa_ray.models.vocab import Vocab
from sa_ray.preference import read_manifest

WER_TAG = lineage.WER_TAG
# one evaluation at a time, beside the driver's other stages (the evaluators are roles of their own)
_EVALUATING = ThreadPoolExecutor(1, thread_name_prefix="evaluate")


@dataclass
class Loop:
    """What every stage reads, made once per job."""

    cfg: Config
    run: AlignRun
    base_dir: Path
    vocab: Vocab
    frame_rate: float
    roles: dict  # the long-lived actors (actors.pipeline.start_roles)
    bank_ref: object  # the training voices' prompts, in Ray's object store
    probe: dict  # the fixed sequence whose logprob proves which adapter an engine serves
    tags: dict  # the run's MLflow tags: method, pairs, rollout engine, metric backends
    lineage: dict  # what every adapter of the run is made from (sa_ray.lineage): base fingerprint, config, protocol
    run_id: str = ""  # the MLflow parent run (set once it is open)


def roll_out(loop: Loop, i: int) -> dict:
    """Iteration i's pair set, sampled from policy version i and scored by the reference (committed once)."""
    run, start = loop.run, time.perf_counter()
    policy = {
        "version": i,
        "adapter_dir": str(run.adapter(i)) if i else None,
        "probe": run.probe(i) or {**loop.probe, "logprob": ray.get(loop.roles["reference"].probe.remote(loop.probe))},
        "tolerance": loop.cfg.align.probe_tolerance,
        "critic_dir": critic_of(loop, i),
    }
    manifest = run.pairs_done(i) or make_pairs(
        i,
        loop.cfg,
        Path(loop.cfg.run_dir) / "data",
        run.pairs(i),
        loop.vocab,
        loop.bank_ref,
        loop.frame_rate,
        loop.roles,
        policy,
        vote_pairs(loop, i) if loop.cfg.align.uses_votes else None,
    )
    return {
        "pairs": manifest["pairs"],
        "prompts": manifest["prompts"],
        **({"vote_pairs": manifest["vote_pairs"]} if "vote_pairs" in manifest else {}),
        "rollout_tokens_per_s": manifest.get("rollout_tokens_per_s"),
        "rollout_seconds": time.perf_counter() - start,
        **{
            f"pairs_{key}": manifest[key]
            for key in ("chosen_reward", "rejected_reward", "error_kinds")
            if key in manifest
        },
        **{
            key: manifest[key]
            for key in ("rollout_engines", "rollout_duration_ratio", "rollout_nll_per_token")
            if key in manifest
        },
        **({"rollout_reward": manifest["sample_reward"]} if "sample_reward" in manifest else {}),
        **length_guard(loop, i, manifest),
    }


def vote_pairs(loop: Loop, i: int) -> votes.VotePairs:
    """The pairs the listeners' votes make for iteration i (`sa_ray.votes.vote_pairs`): every usable vote of this
    base that no earlier pair set of the run holds, each vote trained on once (`align.replay` may replay it), with
    what was left out said on the terminal. align.pairs=votes with no such vote stops the job, naming why."""
    source = votes.align_source(loop.cfg)
    earlier = [d for d in map(loop.run.pairs, range(i)) if read_manifest(d) and any(d.glob("*.parquet"))]
    used = votes.used_votes(
        u for d in earlier for u in pq.read_table(d, columns=["utt_id"]).column("utt_id").to_pylist()
    )
    made = votes.vote_pairs(votes.load_votes(source), loop.lineage["base_fingerprint"], i, used)
    print(made.summary(source), flush=True)
    if not made.rows and loop.cfg.align.rollout_pairs is None:
        raise votes.VotesError(
            f"align.pairs=votes: no new vote to learn from for iteration {i} ({made.summary(source)}); vote on more "
            "takes of the endpoint and run the job again (it resumes here), or use align.pairs=golden+votes"
        )
    return made


def length_guard(loop: Loop, i: int, manifest: dict) -> dict:
    """Flags policy version i when its rollouts' duration ratio leaves the guard's band or jumps from version
    i-1's (`sa_ray.guards.length_exploit`): a warning line, an MLflow tag and the record's `length_exploit`."""
    ratio = manifest.get("rollout_duration_ratio")
    if ratio is None:  # a pair set rolled out before the guards existed
        return {}
    previous = (loop.run.pairs_done(i - 1) or {}).get("rollout_duration_ratio") if i else None
    note = guards.length_exploit(ratio, previous)
    if note is None:
        return {"length_exploit": 0}
    print(f"warning: policy version {i}'s rollouts look like a length exploit: {note}", flush=True)
    tracking.set_tags({f"sa_ray.length_exploit.v{i}": note})
    return {"length_exploit": 1, "length_exploit_note": f"version {i}: {note}"}


def critic_of(loop: Loop, i: int) -> str | None:
    """The critic that values version i's samples, and that critic v_{i+1} trains on from (so the rows' values are
    the V_old of its value clip): critic v_i with `align.adapter=continue`; None, a fresh one, at version 0, with
    `align.adapter=restart`, and for a version another method made (a resumed run may switch methods)."""
    fitted = loop.cfg.align.adapter == "continue" and loop.run.critic_fitted(i) is not None
    return str(loop.run.critic(i)) if fitted else None


def learn(loop: Loop, k: int) -> dict:
    """Policy version k from version k-1 and its pairs, on Ray Train (a v_k committed before a kill is kept); with a
    critic (ppo), critic version k fits in its own role meanwhile, on the same pairs (likewise kept)."""
    run, start = loop.run, time.perf_counter()
    critic, staging = None, None
    if "critic" in loop.roles and run.critic_fitted(k) is None:
        # the learner's child run, made before either logs into it (fit_learner finds it by name)
        child = tracking.child_run(loop.cfg, loop.run_id, f"learner-iter{k - 1}")
        staging = atomic.aside(run.critic(k))
        critic = loop.roles["critic"].fit.remote(
            str(run.pairs(k - 1)),
            critic_of(loop, k - 1),
            str(staging),
            child,
            tracking.resolve_uri(loop.cfg.tracking.uri),
        )
    learned = run.learned(k) or fit_learner(loop.cfg, run, k - 1, loop.base_dir, loop.probe, loop.run_id)
    if critic is not None:
        run.commit_critic(staging, k, ray.get(critic))
    return {**learned, **(run.critic_fitted(k) or {}), "learn_seconds": time.perf_counter() - start}


@dataclass
class Evaluation:
    """Version k's held-out metrics (paired with the base's: same utterances, prompts and seeds), its distribution
    gap and sample wavs, computed by the evaluators, `beside` the driver's next stages (the next version's rollout
    and learner) or before it goes on; `result` waits for them and logs them to MLflow from the job's thread
    (MLflow's active run is the thread's)."""

    loop: Loop
    k: int
    usage: dict
    future: Future
    began: float  # perf_counter at its start (`start` is the constructor)

    @classmethod
    def start(cls, loop: Loop, k: int, beside: bool = False) -> Evaluation:
        """`beside`: the next version is made meanwhile (no progress bar: it would break the lines of that)."""
        from actors.evaluator import evaluate_version  # the roles' module (torch and the models): not at import time

        print(f"version {k}: evaluating" + (f" (beside version {k + 1})" if beside else ""), flush=True)
        usage, began = role_usage(loop, ["evaluator"]), time.perf_counter()
        title = f"golden vs synthetic, iteration {k}" if loop.cfg.eval.gap_utterances else None
        adapter = str(loop.run.adapter(k)) if k else None

        def evaluated() -> tuple:  # the evaluation, and when it ended (not when it is waited for)
            roles = loop.roles["evaluator"]
            out = evaluate_version(roles, adapter, ceiling=k == 0, gap_title=title, samples=2, progress=not beside)
            return out, time.perf_counter()

        if beside:
            return cls(loop, k, usage, _EVALUATING.submit(evaluated), began)
        done = Future()  # alone: on the job's thread, as every other stage
        done.set_result(evaluated())
        return cls(loop, k, usage, done, began)

    def result(self, base: dict | None) -> dict:
        (out, png, samples), end = self.future.result()
        if base is not None:
            out.update(record_wer_changes(base, out))
        if png:
            tracking.log_bytes(png, f"gap/iter_{self.k}.png")
        for name, wav, sr in samples:
            tracking.log_wav(wav, sr, f"samples/iter_{self.k}/{name}")
        out["eval_seconds"] = end - self.began  # the whole stage (metrics, gap, samples), not the wait for it
        return {**out, **usage_record(self.loop, self.usage)}


def role_usage(loop: Loop, names=None) -> dict[str, dict[str, float]]:
    """The long-lived roles' busy seconds so far and peak RSS (`actors.usage`), all or those `names`d; a role of
    several actors (engine replicas, evaluators, reward scorers) as one (their seconds summed, the largest peak)."""
    handles = {name: h if isinstance(h, list) else [h] for name, h in loop.roles.items()}
    handles = {name: h for name, h in handles.items() if h and (names is None or name in names)}
    usages = ray.get([h.usage.remote() for hs in handles.values() for h in hs])
    out, at = {}, 0
    for name, hs in handles.items():
        mine, at = usages[at : at + len(hs)], at + len(hs)
        out[name] = {
            "busy_seconds": sum(u["busy_seconds"] for u in mine),
            "peak_rss_mb": max(u["peak_rss_mb"] for u in mine),
        }
    return out


def usage_record(loop: Loop, before: dict[str, dict[str, float]]) -> dict[str, float]:
    """The iteration profile of a stage: the busy seconds of each role of `before` while it ran
    (`busy_<role>_seconds`), its peak RSS so far (`peak_rss_<role>_mb`) and the driver's; the learner's come with
    its metrics. Only `before`'s roles are asked: a role at work beside this stage would answer when done."""
    out = {"peak_rss_driver_mb": peak_rss_mb()}
    for name, now in role_usage(loop, before).items():
        busy, earlier = now["busy_seconds"], before[name]["busy_seconds"]
        out[f"busy_{name}_seconds"] = busy - earlier if busy >= earlier else busy  # less: Ray restarted it
        out[f"peak_rss_{name}_mb"] = now["peak_rss_mb"]
    return out


def publish(loop: Loop, k: int, record: dict, records: list[dict]) -> None:
    """Version k's metrics to MLflow; its adapter registered once as `<name>-policy`, tagged with its lineage, as
    `latest`; `best` when no version of the same base and protocol has a lower held-out WER; `champion` (what the
    endpoint serves by default) when it beats the base, and the champion, beyond the noise (`lineage.beats`)."""
    tracking.log_metrics({key: v for key, v in record.items() if key != "iteration"}, step=k)
    if k == 0:
        return
    name, wer = f"{loop.cfg.name}-policy", record["heldout_sentences_wer"]
    tracking.log_artifact(loop.run.adapter(k), f"adapters/v{k}")
    tags = {**lineage.tags({**loop.lineage, "run_id": loop.run_id, "policy_version": k}), WER_TAG: wer}
    version = tracking.register_model(name, loop.run_id, f"adapters/v{k}", ["latest"], tags, key=f"{loop.run_id}/v{k}")
    record["registered_version"], record["aliases"] = version, ["latest"]
    same = {key: tags[key] for key in (lineage.TAG + "base_fingerprint", lineage.TAG + "eval_protocol")}
    peers = {v: tracking.version_tags(name, v) for v in tracking.find_versions(name, same) if v != version}
    if all(wer <= float(t[WER_TAG]) for t in peers.values()):
        tracking.set_alias(name, "best", version)
        record["aliases"].append("best")
    champion = tracking.alias_version(name, "champion", tracking.resolve_uri(loop.cfg.tracking.uri))
    held = peers.get(champion)  # a champion of another base or protocol is no yardstick
    versus = None
    if held and held.get(lineage.TAG + "run_id") == loop.run_id:  # evaluated by this run: a paired comparison
        versus = record_wer_changes(records[int(held[lineage.TAG + "policy_version"])], record)
    promoted, why = lineage.beats(record, held and {"heldout_sentences_wer": float(held[WER_TAG])}, versus)
    if promoted:
        tracking.set_alias(name, "champion", version)
        record["aliases"].append("champion")
    record["champion_note"] = f"{'champion' if promoted else 'not champion'}: {why}"


def make_version(loop: Loop, k: int, previous: dict | None) -> dict:
    """Policy version k made from version k-1 (k > 0): its record so far (pairs, learner, their roles' work)."""
    settings = asdict(loop.cfg.align)
    usage = role_usage(loop, [name for name in loop.roles if name != "evaluator"])  # it may be at version k-1
    record = {"iteration": k, "align_settings": settings}
    if k > 0:
        note_settings_changes(previous.get("align_settings", settings), settings, k)
        print(f"version {k}: rolling out pairs from version {k - 1}", flush=True)
        record.update(roll_out(loop, k - 1))
        print(f"version {k}: learning from {record['pairs']} pairs", flush=True)
        record.update(learn(loop, k))
    return {**record, **usage_record(loop, usage)}


def finish_version(loop: Loop, record: dict, evaluation: Evaluation, records: list[dict]) -> dict:
    """Version k's record completed with its evaluation (waited for), published and saved; `records`: versions < k."""
    k = record["iteration"]
    record.update(evaluation.result(records[0] if k else None))
    publish(loop, k, record, records)
    loop.run.save_record(k, record)
    return record


def note_settings_changes(before: dict, now: dict, k: int) -> None:
    """A resumed run may continue under changed overrides (an SFT iteration, then a preference one): said."""
    if changed := settings_changes(before, now):
        print(
            f"note: version {k} is made with settings that differ from version {k - 1}'s: " + "; ".join(changed),
            flush=True,
        )
        tracking.set_tags({f"sa_ray.settings_changed.v{k}": "; ".join(changed)[:5000]})
