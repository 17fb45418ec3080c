"""The pre-annotation loop on any annotation tool (:class:`annotate.tools.AnnotationTool`): push, refresh, accept,
suspects and export, with no tool SDK in sight.

Every step works on the tool's records (:meth:`~annotate.tools.AnnotationTool.records`) and the local cache of the
pool (:class:`annotate.cache.DatasetCache`: zero-shot scores and sentence embeddings, written by :func:`push`, so no
later step runs the encoder):

* :func:`push`: score and embed new texts (cached), fit the adapted head on the whole pool
  (:func:`annotate.adaptive.adapt`), add the records with its suggestions; idempotent by content id (a second push
  of the same file adds nothing; an interrupted one resumes);
* :func:`refresh`: refit the head on the pool and every human decision, write the pending records' new suggestions
  (under a new model version when the head changed), and withdraw bulk acceptances the new suggestion disagrees with;
* :func:`accept`: certified bulk acceptance (:mod:`annotate.acceptance`), the sample flagged for people, the accepted
  suggestions written as :data:`~annotate.tools.AUTO_ACCEPT_USER`'s decisions; ``undo`` withdraws them;
* :func:`suspects`: reviewed labels that look wrong (:func:`annotate.suspects.detect`), flagged with their score;
* :func:`export`: the decided records as a training file (``source`` human / auto-accept), the format of
  ``python -m annotate export`` that ``train/finetune.py`` reads.

Single-label only (a multi-label project keeps its suggestions as pushed).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from annotate.tools import AUTO_ACCEPT_USER, CERTIFY, SUSPECT, AnnotationTool, NewRecord, ToolRecord

logger = logging.getLogger(__name__)


class LoopError(ValueError):
    """The step cannot run as asked (no cached pool, too few reviews, labels that do not match)."""


@dataclass
class StepSummary:
    """What one step did (counts, the head's revision and mode, links, seconds)."""

    step: str
    tool: str
    records: int = 0
    pending: int = 0
    reviewed: int = 0
    added: int = 0
    written: int = 0
    withdrawn: int = 0
    flagged: int = 0
    accepted: int = 0
    revision: str | None = None
    mode: str | None = None
    note: str = ""
    details: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"{self.step} on {self.tool}: {self.records} records, {self.pending} pending, {self.reviewed} "
                 "decided by people"]
        counts = [f"{name} {getattr(self, name)}" for name in ("added", "written", "withdrawn", "flagged", "accepted")
                  if getattr(self, name)]
        if counts:
            lines.append("done: " + ", ".join(counts))
        if self.revision:
            lines.append(f"head {self.revision} ({self.mode})" + (f": {self.note}" if self.note else ""))
        elif self.note:
            lines.append(self.note)
        for key, value in self.details.items():
            if isinstance(value, str):
                lines.append(f"{key}: {value}")
        for name, url in self.links.items():
            lines.append(f"{name}: {url}")
        lines.append(f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def _pool_rows(cache, records: list[ToolRecord], labels: list[str]):
    """The cached pool (rows in record-id order) and each record's row (``None`` when not cached)."""
    pool = cache.load_pool()
    if pool is None:
        raise LoopError(f"no scored pool in the cache {cache.root}: push the texts with this tool first")
    if list(pool.labels) != list(labels):
        raise LoopError(f"the cached pool was scored for {list(pool.labels)}, the project asks {list(labels)}")
    index = pool.index()
    return pool, [index.get(r.id) for r in records]


def _reviews(records: list[ToolRecord], rows: list, labels: list[str]) -> tuple[dict[int, int], list[int]]:
    """``({pool row: label index} of the human decisions, [rows people discarded])``."""
    position = {label: i for i, label in enumerate(labels)}
    reviewed, discarded = {}, []
    for record, row in zip(records, rows):
        if row is None or record.accepted:
            continue
        if record.status == "submitted" and record.human in position:
            reviewed[row] = position[record.human]
        elif record.status == "discarded":
            discarded.append(row)
    return reviewed, discarded


def fit(tool: AnnotationTool, cache, *, head_config=None, records: list[ToolRecord] | None = None):
    """The adapted head on the cached pool and the tool's human decisions: ``(adapted, records, rows, pool)``.

    Raises:
        LoopError: no cached pool, or it holds other labels.
    """
    from annotate.adaptive import adapt

    records = tool.records() if records is None else records
    pool, rows = _pool_rows(cache, records, tool.labels)
    reviewed, discarded = _reviews(records, rows, tool.labels)
    adapted = adapt(pool.embeddings, pool.scores, tool.labels, ids=pool.ids, reviewed=reviewed, discarded=discarded,
                    config=head_config, encoder=pool.meta.get("encoder"),
                    meta={"hypothesis_template": pool.meta.get("hypothesis_template"), "tool": tool.name})
    return adapted, records, rows, pool


def agent_of(adapted, pool) -> str:
    """The suggestions' agent: ``<encoder>:adaptive-head:<revision>``, or the teacher's with ``:zero-shot``."""
    encoder = (pool.meta.get("encoder") or {}).get("model_id", "encoder")
    if adapted.head is not None:
        return f"{encoder}:adaptive-head:{adapted.head.revision}"
    return f"{pool.meta.get('agent') or encoder}:zero-shot:{adapted.report.revision}"


def push(texts: Iterable[tuple[str, str]], tool: AnnotationTool, scorer, cache, *, template: str,
         head_config=None, batch_size: int = 256, progress: bool = True) -> StepSummary:
    """Score and embed the new texts, cache them, fit the head on the whole pool and add the records.

    Args:
        texts: ``(content id, text)`` pairs (:func:`annotate.dataset.record_id`); ids the tool or the cache already
            holds are not scored again (the cache) or added again (the tool).
        scorer: a :mod:`pool.scorers` scorer for ``tool.labels`` and ``template``, or a function of no argument
            that makes one: it is then called only when some text is not cached yet (a push whose texts the cache
            holds loads no model), and the scorer it made is closed here.

    Raises:
        pool.scorers.ScoringError: scoring failed (what was scored stays cached).
        LoopError: see :func:`fit`.
    """
    from tqdm import tqdm

    from annotate.adaptive import preload

    preload()  # the head's libraries load while the tool and the cache are read
    started = time.perf_counter()
    summary = StepSummary("push", tool.name)
    cache.validate(None, tool.labels)  # a cache scored for other labels is emptied
    with ThreadPoolExecutor(max_workers=1) as side:
        link = side.submit(tool.link, "pending")  # needs no suggestion: asked while the pool is read and fitted
        records = tool.records()
        existing = {r.id for r in records}
        pool = cache.load_pool()
        cached = set(pool.ids) if pool is not None else set()
        todo, seen = [], set()
        for rid, text in texts:
            if rid in seen or rid in existing:
                continue
            seen.add(rid)
            todo.append((rid, text))
        new = [(rid, text) for rid, text in todo if rid not in cached]
        made = None
        if new and not hasattr(scorer, "score_and_embed"):
            scorer = made = scorer()
        bar = tqdm(total=len(new), unit="text", desc="score + embed", disable=not progress or not new)
        try:
            _score_new(new, scorer, cache, tool, template, batch_size, bar)
        finally:
            bar.close()
            if made is not None:
                made.close()
        if todo:
            _fit_and_add(todo, cache.load_pool() if new else pool, records, tool, cache, template, head_config,
                         summary)
        summary.links["review (least confident first)"] = link.result()
    summary.records = len(existing) + summary.added
    summary.pending = summary.records
    summary.seconds = time.perf_counter() - started
    return summary


def _fit_and_add(todo: list[tuple[str, str]], pool, records: list[ToolRecord], tool: AnnotationTool, cache,
                 template: str, head_config, summary: StepSummary) -> None:
    """Fit the head on the whole cached ``pool`` and the reviews in ``records``, then add the ``todo`` ``(id, text)``
    records with its suggestions (counted in ``summary``)."""
    from annotate.adaptive import adapt

    index = pool.index()
    rows = [index.get(r.id) for r in records]
    reviewed, discarded = _reviews(records, rows, tool.labels)
    adapted = adapt(pool.embeddings, pool.scores, tool.labels, ids=pool.ids, reviewed=reviewed, discarded=discarded,
                    config=head_config, encoder=pool.meta.get("encoder"),
                    meta={"hypothesis_template": template, "tool": tool.name})
    if adapted.head is not None:
        adapted.head.save(cache.head_dir)
    agent = agent_of(adapted, pool)
    best = adapted.scores.argmax(axis=1)
    add = [NewRecord(rid, text, tool.labels[int(best[index[rid]])], float(adapted.scores[index[rid], best[index[rid]]]))
           for rid, text in todo]
    summary.added = tool.add(add, agent)
    summary.revision, summary.mode = adapted.report.revision, adapted.report.mode
    summary.note = adapted.report.note
    summary.details["bias"] = adapted.report.bias.get("note", "")


def _score_new(new: list[tuple[str, str]], scorer, cache, tool, template: str, batch_size: int, bar) -> None:
    """Score and embed ``new`` ``(id, text)`` pairs in chunks, each chunk written to the cache as it is done."""
    import hashlib

    from pool.store import shard_table

    for start in range(0, len(new), batch_size):
        chunk = new[start:start + batch_size]
        scores, embeddings = scorer.score_and_embed([t for _, t in chunk])
        ids = [rid for rid, _ in chunk]
        cache.pool.write_shard(hashlib.sha256("".join(ids).encode()).hexdigest()[:16],
                               shard_table(ids, [t for _, t in chunk], scores, embeddings, tool.labels))
        if not cache.pool.exists():
            cache.pool.write_meta({"labels": list(tool.labels), "hypothesis_template": template,
                                   "multi_label": False, "method": scorer.served_method, "model": scorer.model_id,
                                   "agent": scorer.agent, "encoder": scorer.encoder})
        bar.update(len(chunk))


def refresh(tool: AnnotationTool, cache, *, head_config=None, min_score_change: float = 0.02,
            head_output: str | Path | None = None) -> StepSummary:
    """Refit the head on the pool and the human decisions; write the pending records' suggestions that changed
    (every pending record's under a new model version when the head's revision changed); withdraw bulk acceptances
    whose new suggestion disagrees with the accepted label.

    Raises:
        LoopError: see :func:`fit`.
    """
    started = time.perf_counter()
    adapted, records, rows, pool = fit(tool, cache, head_config=head_config)
    summary = StepSummary("refresh", tool.name, records=len(records),
                          reviewed=sum(r.status is not None for r in records))
    agent = agent_of(adapted, pool)
    if adapted.head is not None:
        adapted.head.save(cache.head_dir)
        if head_output is not None:
            adapted.head.save(head_output)
    new_version = any(r.agent != agent for r in records if r.pending and r.agent)
    changed, withdraw = {}, []
    for record, row in zip(records, rows):
        if row is None:
            continue
        label = tool.labels[int(adapted.scores[row].argmax())]
        score = float(adapted.scores[row].max())
        if record.accepted and record.status is None and label != record.accepted_label:
            withdraw.append(record.key)
        if not record.pending and not (record.accepted and label != record.accepted_label):
            continue
        if new_version or label != record.suggestion or record.score is None or \
                abs(score - record.score) > min_score_change:
            changed[record.key] = (label, score)
    summary.withdrawn = tool.withdraw(withdraw) if withdraw else 0
    summary.written = tool.write_suggestions(changed, agent, replace_all=new_version) if changed else 0
    summary.pending = sum(r.pending for r in records) + summary.withdrawn
    summary.revision, summary.mode, summary.note = adapted.report.revision, adapted.report.mode, adapted.report.note
    summary.details["agent"] = agent
    summary.links["review (least confident first)"] = tool.link("pending")
    summary.seconds = time.perf_counter() - started
    return summary


#: The planning estimate of a suggestion's precision from its score (as ``annotate accept`` on Argilla).
PLANNING_INFLATION = 2.0


def accept(tool: AnnotationTool, *, target: float = 0.95, confidence: float = 0.95, scope: str = "auto",
           mode: str = "dry run", seed: int = 0, planning_inflation: float = PLANNING_INFLATION) -> StepSummary:
    """Certified bulk acceptance (:mod:`annotate.acceptance`) of the pending suggestions.

    The lot: pending records, records accepted earlier (so a rerun reproduces the plan), and records flagged
    :data:`~annotate.tools.CERTIFY` that people decided since. Sampled records are flagged for review
    (``tool.link("certify")``); once the tests can run, the certified regions' pending records are accepted
    (``mode="apply"``) as :data:`~annotate.tools.AUTO_ACCEPT_USER`'s decisions. ``mode="undo"`` withdraws every
    acceptance. A review is right when the person's label equals the suggestion, wrong otherwise (discarded too).
    ``planning_inflation``: the sample is planned for an error of ``inflation * (1 - score)`` (it decides how many
    reviews are spent, never what is certified; :class:`annotate.simulate.AcceptanceSettings`).

    Raises:
        ValueError: target or confidence outside (0, 1), an unknown scope or mode.
    """
    from annotate.acceptance import certify, plan_certification

    if mode not in ("dry run", "apply", "undo"):
        raise ValueError(f"mode must be 'dry run', 'apply' or 'undo'; got {mode!r}")
    started = time.perf_counter()
    records = tool.records()
    summary = StepSummary("accept", tool.name, records=len(records),
                          reviewed=sum(r.status is not None for r in records))
    if mode == "undo":
        summary.withdrawn = tool.withdraw([r.key for r in records if r.accepted])
        summary.pending = sum(r.pending for r in records) + summary.withdrawn
        summary.seconds = time.perf_counter() - started
        return summary
    labels = list(tool.labels)
    index = {label: i for i, label in enumerate(labels)}
    valid = np.array([r.suggestion in index and r.score is not None for r in records], dtype=bool)
    scores = np.array([float(r.score) if ok else 0.0 for r, ok in zip(records, valid)])
    suggested = np.array([index[r.suggestion] if ok else 0 for r, ok in zip(records, valid)], dtype=np.int64)
    flagged = np.array([bool(r.flags.get(CERTIFY)) for r in records], dtype=bool)
    pending = np.array([r.pending for r in records], dtype=bool)
    auto = np.array([r.accepted for r in records], dtype=bool)
    lot = valid & (pending | auto | (flagged & np.array([r.status is not None for r in records])))
    correct = np.full(len(records), np.nan)
    for i, r in enumerate(records):
        if lot[i] and r.status == "submitted" and not r.accepted:
            correct[i] = float(r.human == r.suggestion)
        elif lot[i] and r.status == "discarded":
            correct[i] = 0.0
    priority = _priority([r.id for r in records], seed)
    expected = 1.0 - planning_inflation * (1.0 - scores)
    plan = plan_certification(scores, suggested, lot, labels, expected, priority, target=target,
                              confidence=confidence, scope=scope)
    result = certify(scores, suggested, lot, labels, plan, correct)
    requests = set(result.requests.tolist())
    to_flag = {records[i].key: 1 for i in requests if pending[i] and not flagged[i]}
    to_clear = {records[i].key: None for i in np.flatnonzero(pending & flagged) if i not in requests}
    if mode == "apply":
        summary.flagged = tool.flag(CERTIFY, {**to_flag, **to_clear})
        take = {records[i].key: records[i].suggestion for i in np.flatnonzero(result.accepted & pending)}
        summary.accepted = tool.accept(take) if take else 0
    else:
        summary.flagged = len(to_flag)
        summary.accepted = int((result.accepted & pending).sum())
    summary.pending = int(pending.sum())
    groups = {}
    for name, group in result.groups.items():
        member_labels = [labels[i] for i in plan.groups[name].labels]
        groups[name] = {"labels": member_labels, "threshold": group.threshold, "accepted": group.accepted,
                        "region": group.region_size, "tests": group.tests}
    summary.details = {"target": target, "confidence": confidence, "scope": scope, "groups": groups,
                       "to_review": len(requests), "would_accept": int((result.accepted & pending).sum()),
                       "table": _accept_table(groups, target, confidence)}
    summary.note = (f"{mode}: {summary.details['would_accept']} pending records certified at precision >= {target:g} "
                    f"(confidence {confidence:g}); {len(requests)} sampled records to review first")
    if requests:
        summary.links["review the certification sample"] = tool.link("certify")
    for name, group in groups.items():
        if group["threshold"] is not None and name != "*":
            summary.links[f"validate {name} (most confident first)"] = tool.link("validate", name)
    summary.seconds = time.perf_counter() - started
    return summary


def _priority(ids: list[str], seed: int) -> np.ndarray:
    """A uniform random number in [0, 1) per record from its content id and ``seed``: the same record keeps its
    number between runs, whatever else the project holds (the sample is reused, never redrawn)."""
    import hashlib

    return np.array([int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:13], 16) / float(16 ** 13)
                     for rid in ids])


def _accept_table(groups: dict, target: float, confidence: float) -> str:
    lines = [f"group: threshold, accepted of region, last test (precision >= {target:g} at {confidence:g})"]
    for name, g in groups.items():
        last = g["tests"][-1] if g["tests"] else None
        test = (f"{last['correct']}/{last['sampled']} sampled right, lower bound {last['lower_bound']:.3f} "
                f"{'pass' if last['passed'] else 'fail'}") if last else "waiting for reviews"
        threshold = "-" if g["threshold"] is None else f"{g['threshold']:.4f}"
        who = name if name != "*" else "together: " + ", ".join(g["labels"])
        lines.append(f"  {who}: {threshold}, {g['accepted']} of {g['region']}; {test}")
    return "\n".join(lines)


def suspects(tool: AnnotationTool, cache, *, head_config=None, dry_run: bool = False) -> StepSummary:
    """Flag the human labels that look wrong (:func:`annotate.suspects.detect`: out-of-fold probabilities of the
    adapted head, then cleanlab) with their suspect score; clear the flag of the others.

    Raises:
        LoopError: no cached pool; annotate.suspects.SuspectsError: too few reviews, or one reviewed label.
    """
    from annotate.suspects import detect

    started = time.perf_counter()
    records = tool.records()
    pool, rows = _pool_rows(cache, records, tool.labels)
    reviewed, discarded = _reviews(records, rows, tool.labels)
    report = detect(pool.embeddings, pool.scores, tool.labels, reviewed, discarded=discarded, config=head_config)
    key_of = {row: r.key for r, row in zip(records, rows) if row is not None}
    values = {key_of[int(row)]: (round(float(s), 4) if flag else None)
              for row, s, flag in zip(report.rows, report.score, report.flagged)}
    summary = StepSummary("suspects", tool.name, records=len(records), reviewed=len(reviewed),
                          pending=sum(r.pending for r in records))
    summary.flagged = int(report.flagged.sum())
    if not dry_run:
        tool.flag(SUSPECT, values)
    summary.note = (f"{summary.flagged} of {len(reviewed)} human labels look wrong (out-of-fold head accuracy "
                    f"{report.oof_accuracy:.4f}; {report.method})")
    summary.details["per_label"] = report.per_label()
    summary.links["review (most suspect first)"] = tool.link("suspects")
    summary.seconds = time.perf_counter() - started
    return summary


def export(tool: AnnotationTool, cache, output: str | Path, *, humans_only: bool = False,
           include_discarded: bool = False) -> StepSummary:
    """Write the decided records as JSON Lines in ``python -m annotate export``'s format: ``{"id", "text", "label",
    "status", "source" (human / auto-accept), "annotator", "suggestion", "suggestion_score", "teacher_scores",
    "labels_order", "agent"}``; the teacher scores come from the cache (``None`` for a record it lacks). Written to
    a temporary file and renamed."""
    import os

    started = time.perf_counter()
    records = tool.records()
    pool = cache.load_pool()
    index = pool.index() if pool is not None else {}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    written, sources = 0, {"human": 0, AUTO_ACCEPT_USER: 0}
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            if record.accepted and record.status is None:
                if humans_only:
                    continue
                label, status, source, annotator = record.accepted_label, "submitted", AUTO_ACCEPT_USER, \
                    AUTO_ACCEPT_USER
            elif record.status == "submitted" or (record.status == "discarded" and include_discarded):
                label, status, source, annotator = (record.human if record.status == "submitted" else None,
                                                    record.status, "human", record.annotator)
            else:
                continue
            row = index.get(record.id)
            teacher = ({label_: float(v) for label_, v in zip(tool.labels, pool.scores[row])}
                       if row is not None else None)
            fh.write(json.dumps({"id": record.id, "text": record.text, "label": label, "status": status,
                                 "source": source, "annotator": annotator, "suggestion": record.suggestion,
                                 "suggestion_score": record.score, "teacher_scores": teacher,
                                 "labels_order": list(tool.labels), "agent": record.agent}) + "\n")
            written += 1
            sources[source] += 1
    os.replace(tmp, output)
    summary = StepSummary("export", tool.name, records=len(records),
                          reviewed=sum(r.status is not None for r in records), pending=sum(r.pending for r in records))
    summary.added = 0
    summary.details = {"exported": written, "sources": sources, "output": str(output)}
    summary.note = f"exported {written} rows to {output} (human {sources['human']}, auto-accept " \
                   f"{sources[AUTO_ACCEPT_USER]})"
    summary.seconds = time.perf_counter() - started
    return summary
