"""What the simulation report concludes from a method's scores (:class:`edgegan.eval.GeneratorScore`).

A metric names a winner only where one direction is better: feature-FID (whole set, target
classes) and the class-histogram TV distance, all lower-is-better. The target-class share has no
better direction: 1.0 means the generator forgot every other class, ~0 that it never learned the
target. It is read against its ideal, the population share p of the target's classes (what a
generator of the whole population draws), as one of three verdicts:

* "learned the target, kept the rest": share ≥ p/2 and 1 − share ≥ (1 − p)/2;
* "forgot the rest": the other classes hold less than half their population share;
* "missed the target": the target's classes hold less than half their population share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from edgegan.eval import GeneratorScore

if TYPE_CHECKING:
    from edgegan.sim.coalescence import CoalescenceResult

LOWER, HIGHER = "lower", "higher"

#: (field of :class:`GeneratorScore`, name in the report, better direction or None when neither is)
METRICS = (("fid_whole", "feature-FID vs whole data set", LOWER),
           ("fid_target", "feature-FID vs target classes", LOWER),
           ("class_tv", "class-histogram TV vs population", LOWER),
           ("target_share", "target-class share", None))

LEARNED, FORGOT, MISSED = "learned the target, kept the rest", "forgot the rest", "missed the target"


def class_population(histogram: torch.Tensor | Sequence[float]) -> list[float]:
    """Class counts → class shares summing to 1."""
    h = torch.as_tensor(histogram, dtype=torch.float64)
    return (h / h.sum()).tolist()


def population_share(population: torch.Tensor | Sequence[float], classes: Sequence[int]) -> float:
    """p = Σ_{c ∈ classes} population_c / Σ population (the ideal target share)."""
    pop = torch.as_tensor(population, dtype=torch.float64)
    return float(pop[list(classes)].sum() / pop.sum())


def share_verdict(share: float | None, ideal: float | None) -> str | None:
    """The target share's verdict against its ideal p (see the module docstring); None if unknown."""
    if share is None or ideal is None:
        return None
    if share < ideal / 2:
        return MISSED
    if 1.0 - share < (1.0 - ideal) / 2:
        return FORGOT
    return LEARNED


def winners(methods: dict[str, GeneratorScore]) -> str:
    """One sentence naming the best method on each metric with a better direction (lowest FID /
    TV), metrics with the same winner grouped; target share is judged by :func:`share_verdict`."""
    by_winner: dict[str, list[str]] = {}
    for key, label, better in METRICS:
        vals = {n: getattr(s, key) for n, s in methods.items() if getattr(s, key) is not None}
        if vals and better is not None:
            best = (min if better == LOWER else max)(vals, key=vals.get)
            by_winner.setdefault(best, []).append(f"{label} ({vals[best]:.3g}, {better} is better)")
    parts = [f"{name} won on {' and '.join(ms)}" for name, ms in by_winner.items()]
    return ("Of the Stage II methods, " + "; ".join(parts) + ".") if parts else ""


def share_sentence(methods: dict[str, GeneratorScore], ideal: float | None) -> str:
    """Methods grouped by target-share verdict, e.g. "forgot the rest: edge_only (0.98)"."""
    groups: dict[str, list[str]] = {}
    for name, s in methods.items():
        v = share_verdict(s.target_share, ideal)
        if v is not None:
            groups.setdefault(v, []).append(f"{name} ({s.target_share:.2f})")
    if not groups:
        return ""
    order = [v for v in (LEARNED, FORGOT, MISSED) if v in groups]
    return (f"Target-class share against its ideal {ideal:.2f} (the population share of the target's classes; "
            "no winner, neither direction is better): " + "; ".join(f"{v}: {', '.join(groups[v])}" for v in order)
            + ".")


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def _score_cells(sc: GeneratorScore, ideal: float | None) -> str:
    return (f"{sc.fid_whole:.1f} | {fmt(sc.fid_target)} | {sc.class_tv:.3f} | {fmt(sc.target_share, '.3f')} | "
            f"{share_verdict(sc.target_share, ideal) or '–'} | {sc.classes_covered:.2f}")


def coalescence_md(co: CoalescenceResult) -> list[str]:
    """The report's coalescence section: sources, Stage I, each Stage II method and the verdicts."""
    lines = ["## Coalescence (seed 000)", "",
             f"Sources uploaded: {', '.join(co.uploaded)}"
             + (f"; left before uploading: {', '.join(co.left)}" if co.left else "") + ".", ""]
    st = co.stage1
    if st.score is None:
        return lines + [f"Stage I ({st.aggregator}, {st.seconds:.1f} s): BW2-UVP {st.bw2_uvp:.2f} % against the "
                        "exact Gaussian barycenter (lower is better); sources alone: "
                        + ", ".join(f"{k} {v:.1f} %" for k, v in co.sources.items()), ""]
    p = co.target_population_share
    lines += [f"Target: {co.target_samples} samples of classes {co.target_classes}. Stage I ({st.aggregator}, "
              f"{st.seconds:.1f} s); sources alone, feature-FID vs whole data set: "
              + ", ".join(f"{k} {v:.1f}" for k, v in co.sources.items()) + ".", "",
              "Metrics (the coalescence benchmark's): feature-FID against the whole data set (seed 000's rule) and "
              "against the target's classes, total-variation distance between the generated class histogram and "
              "the population's (all three: lower is better), share of samples in the target's classes (ideal: "
              f"the population share of those classes, {fmt(p, '.2f')}; verdict as below); classes covered = "
              "fraction of classes holding at least half a uniform share (higher is better).", "",
              "| method | feature-FID whole ↓ | feature-FID target ↓ | class TV ↓ | target share "
              f"(ideal {fmt(p, '.2f')}) | target-share verdict | classes covered ↑ | seconds |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |",
              f"| stage I ({st.aggregator}) | {_score_cells(st.score, p)} | {st.seconds:.1f} |"]
    lines += [f"| {name} | {_score_cells(m.final, p)} | {m.seconds:.1f} |" for name, m in co.methods.items()]
    finals = {n: m.final for n, m in co.methods.items()}
    sentences = [x for x in (winners(finals), share_sentence(finals, p)) if x]
    return lines + ["", " ".join(sentences), ""] if sentences else lines + [""]
