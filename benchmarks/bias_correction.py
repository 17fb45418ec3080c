"""Label-bias corrections of zero-shot scores over a pool (:mod:`service.bias`), side by side, for both methods.

Pools: the tune halves of the dev tasks and the train splits of SST-2, emotion and AG News (tuning), the report
halves and SST-2 validation, emotion test, AG News test (reporting); each capped at ``--cap`` texts
(:func:`benchmarks.cold_start.task_split`'s halves; the pool part of each). Every pool is scored once by the embedding
and the NLI method (cached in ``--cache-dir``), plus 64 random sequences of the pool's own words (Fei et al. 2023) and
three content-free inputs (``N/A``, ``[MASK]``, an empty-ish text; Zhao et al. 2021).

Candidates: ``none``; ``floor`` at shares 0.25 / 0.5 / 0.75 of ``1/K`` (:func:`service.bias.floor_shift`); ``batch``
(Zhou et al. 2023); contextual calibration (``content-free``); domain-context calibration (``domain``); EM
re-estimation of the prior after batch calibration (``batch+em``, Saerens et al. 2002); a tied-covariance Gaussian
mixture on the log-probabilities (``gmm``). Reported: accuracy change against ``none`` per pool, and the mean and
the worst change over the tuning and the reporting pools. ``floor_share`` was chosen on the tuning pools only.

    python benchmarks/bias_correction.py --data-dir ../shared/data --output-dir benchmarks/results/bias_correction
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer

from benchmarks.machine import cpu_facts  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0], rich_markup_mode=None,
                  pretty_exceptions_enable=False)
POOLS = {"tune": ["imdb:tune", "cr:tune", "tweeteval_sentiment:tune", "goemotions_ekman:tune", "sst2:train",
                  "emotion:train", "ag_news:train"],
         "report": ["imdb:report", "cr:report", "tweeteval_sentiment:report", "goemotions_ekman:report", "sst2:eval",
                    "emotion:eval", "ag_news:eval"]}


def pool_texts(data: Path, item: str, cap: int) -> tuple[list[str], np.ndarray]:
    """Texts and gold indices of one pool (see the module docstring)."""
    from benchmarks.cold_start import TASKS, _rows, task_split

    task, part = item.split(":")
    if part in ("tune", "report"):
        texts, y, _, _, _ = task_split(data, task, part, cap, 1)
        return texts, np.asarray(y)
    spec = TASKS[task]
    path, fields = ((spec["file"], ["text"]) if part == "train" else spec["eval"])
    texts, gold = _rows(data / "classification" / path, fields, "label")
    index = {label: i for i, label in enumerate(spec["labels"])}
    y = np.array([index[spec.get("map", {}).get(g, g)] for g in gold])
    keep = np.sort(np.random.default_rng(0).permutation(len(texts))[:cap])
    return [texts[i] for i in keep], y[keep]


def random_texts(texts: list[str], n: int = 64, seed: int = 0) -> list[str]:
    """Fei et al. 2023's domain context: sequences of words drawn at random from the pool, of its median length."""
    rng = np.random.default_rng(seed)
    words = [w for t in texts for w in t.split()]
    length = max(3, int(np.median([len(t.split()) for t in texts])))
    return [" ".join(rng.choice(words, size=length)) for _ in range(n)]


def candidates(p: np.ndarray, p_random: np.ndarray, p_free: np.ndarray) -> dict[str, np.ndarray]:
    """Every correction's probabilities of the pool."""
    from annotate.adaptive import em_prior
    from service.bias import estimate_bias

    def softmax(z):
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    logp = np.log(np.clip(p, 1e-12, 1))
    out = {"none": p, **{f"floor {s:g}": estimate_bias(p, "floor", floor_share=s).apply(p) for s in (0.25, 0.5, 0.75)},
           "batch": estimate_bias(p, "batch").apply(p),
           "content-free": softmax(logp - np.log(np.clip(p_free.mean(0), 1e-12, 1))),
           "domain": softmax(logp - np.log(np.clip(p_random.mean(0), 1e-12, 1)))}
    out["batch+em"] = em_prior(out["batch"])[1]
    out["gmm"] = _gmm(logp)
    return out


def _gmm(logp: np.ndarray) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    z = logp - logp.mean(1, keepdims=True)
    start = (z - z.mean(0)).argmax(1)
    k = z.shape[1]
    means = np.stack([z[start == c].mean(0) if (start == c).any() else z.mean(0) for c in range(k)])
    weights = np.clip(np.bincount(start, minlength=k) / len(z), 1e-3, None)
    model = GaussianMixture(k, covariance_type="tied", means_init=means, weights_init=weights / weights.sum(),
                            reg_covar=1e-3, random_state=0).fit(z)
    return model.predict_proba(z)


@app.command()
def main(data_dir: Annotated[Path, typer.Option()] = Path("../shared/data"),
         output_dir: Annotated[Path, typer.Option()] = Path("benchmarks/results/bias_correction"),
         cap: Annotated[int, typer.Option(help="Most texts a pool (NLI costs K passes a text).")] = 600,
         methods: Annotated[str, typer.Option()] = "embedding,nli",
         cache_dir: Annotated[Path, typer.Option()]
         = Path.home() / ".cache" / "zeroshot-preannotate" / "annotate" / "bias") -> None:
    """Score every pool with both methods (cached), apply every correction, write the table."""
    from annotate.cli import settings_from_env, zero_shot_scorer
    from annotate.simulate import scored_split
    from benchmarks.cold_start import TASKS

    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for side, items in POOLS.items():
        for item in items:
            task = item.split(":")[0]
            spec = TASKS[task]
            texts, gold = pool_texts(data_dir, item, cap)
            for method in methods.split(","):
                scorer = zero_shot_scorer(settings_from_env(), spec["labels"], spec["template"], method)
                key = {"labels": spec["labels"], "hypothesis_template": spec["template"], "method": method,
                       "model": scorer.model_id}
                try:
                    _, p = scored_split(texts, scorer, cache_dir, key)
                    _, p_random = scored_split(random_texts(texts), scorer, cache_dir, key)
                    _, p_free = scored_split(["N/A", "[MASK]", "..."], scorer, cache_dir, key)
                finally:
                    scorer.close()
                accuracy = {name: float((q.argmax(1) == gold).mean()) for name, q in
                            candidates(p, p_random, p_free).items()}
                shares = np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p)
                rows.append({"pool": item, "side": side, "method": method, "n": len(texts), "accuracy": accuracy,
                             "top_share": float(shares.max()), "min_share_x_k": float(shares.min() * len(shares))})
                typer.echo(f"{item} {method}: none {accuracy['none']:.3f}, floor 0.5 {accuracy['floor 0.5']:.3f}, "
                           f"batch {accuracy['batch']:.3f}")
    names = list(rows[0]["accuracy"])
    lines = ["| method | correction | tune: mean change | tune: worst | report: mean change | report: worst |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for method in methods.split(","):
        for name in names:
            stats = {}
            for side in POOLS:
                delta = [r["accuracy"][name] - r["accuracy"]["none"] for r in rows
                         if r["method"] == method and r["side"] == side]
                stats[side] = (float(np.mean(delta)), float(np.min(delta)))
            summary[f"{method}/{name}"] = stats
            lines.append(f"| {method} | {name} | {100 * stats['tune'][0]:+.1f} | {100 * stats['tune'][1]:+.1f} | "
                         f"{100 * stats['report'][0]:+.1f} | {100 * stats['report'][1]:+.1f} |")
    lines += ["", "| pool | method | none | " + " | ".join(n for n in names if n != "none") + " |",
              "|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['pool']} | {r['method']} | {r['accuracy']['none']:.3f} | "
                     + " | ".join(f"{r['accuracy'][n]:.3f}" for n in names if n != "none") + " |")
    machine = cpu_facts()
    lines.append(f"\nAccuracy (changes in points against none). {machine['cpu']}, {machine['cores']} cores, flags "
                 f"{machine['flags']}; load {machine['load_average']}.")
    (output_dir / "bias_correction.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (output_dir / "bias_correction.json").write_text(json.dumps(
        {"rows": rows, "summary": summary, "machine": machine, "cap": cap,
         "command": "python benchmarks/bias_correction.py " + " ".join(sys.argv[1:])}, indent=1) + "\n",
        encoding="utf-8")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    app()
