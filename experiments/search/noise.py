"""Is the best configuration better, or lucky? Mean ± std over its seeds, and a test.

With `repeats`, every configuration (a trial) trains with several seeds. `per_config`
puts one row per trial: the mean, standard deviation and count of its objective runs'
final metric. `verdict` asks whether the best mean beats the runner-up's by more than the
seeds' noise: Welch's t-test (unequal variances), one-sided, at the 5% level.
"""

from __future__ import annotations

import math

import pandas as pd

from experiments.core import config as cfg
from experiments.core.words import number as show_value

ALPHA = 0.05


def per_config(frame: pd.DataFrame, metric: str, ascending: bool) -> pd.DataFrame:
    """One row per complete trial: mean, std and n of its objective runs' final metric,
    best mean first (a trial's runs that were not a result are left out)."""
    column = f"final_{metric}"
    cols = ["sweep", "trial", f"mean_{metric}", f"std_{metric}", "seeds"]
    if frame.empty or column not in frame:
        return pd.DataFrame(columns=cols)
    ok = frame[(frame["state"] == "COMPLETE") & (frame["role"] == "objective")
               & frame["trial"].notna() & frame[column].notna()]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    # Sweeps sharing a W&B project share an experiment, and their trial numbers.
    grouped = ok.groupby(["sweep", "trial"])[column]
    out = pd.DataFrame({f"mean_{metric}": grouped.mean(), f"std_{metric}": grouped.std(),
                        "seeds": grouped.count()}).reset_index()
    return out.sort_values(f"mean_{metric}", ascending=ascending,
                           kind="stable").reset_index(drop=True)


def welch(a: list[float], b: list[float], greater: bool) -> tuple[float, float]:
    """(t, one-sided p) of Welch's t-test that mean(a) > mean(b) (or < when not `greater`).
    NaN when either side has fewer than two values or neither varies."""
    from scipy import stats  # MindSpore's own dependency

    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    result = stats.ttest_ind(a, b, equal_var=False,
                             alternative="greater" if greater else "less")
    return float(result.statistic), float(result.pvalue)


def verdict(frame: pd.DataFrame, table: pd.DataFrame, metric: str, ascending: bool) -> str:
    """One line: whether the best configuration beats the runner-up beyond the noise."""
    if len(table) < 2:
        return "noise: fewer than two complete configurations to compare"
    best, second = table.iloc[0].to_dict(), table.iloc[1].to_dict()
    several = table["sweep"].nunique() > 1
    for row in (best, second):
        row["trial"], row["seeds"] = int(row["trial"]), int(row["seeds"])
        row["name"] = f"trial {row['trial']}" + (f" of {row['sweep']}" if several else "")
    if min(best["seeds"], second["seeds"]) < 2:
        return ("noise: unknown, one seed per configuration (give the sweep `repeats: 3` "
                "or more to test the winner against the noise)")
    column = f"final_{metric}"
    ok = frame[(frame["state"] == "COMPLETE") & (frame["role"] == "objective")]
    a, b = ([*ok.loc[(ok["sweep"] == row["sweep"]) & (ok["trial"] == row["trial"]),
                     column].dropna()] for row in (best, second))
    t, p = welch(a, b, greater=not ascending)
    gap = best[f"mean_{metric}"] - second[f"mean_{metric}"]
    head = (f"noise: {best['name']} vs runner-up {second['name']}: "
            f"{metric} {gap:+.4f} (Welch's t {t:.2f}, one-sided p {p:.3f}, "
            f"{best['seeds']} and {second['seeds']} seeds): ")
    if not math.isnan(p) and p < ALPHA:
        return head + f"the best beats the runner-up beyond the noise (p < {ALPHA})"
    return head + f"within the noise (p >= {ALPHA}): the ranking of these two may be luck"


def configs_text(configs: pd.DataFrame, frame: pd.DataFrame, metric: str, top: int) -> str:
    """Per configuration (trial): its searched values and mean ± std over its seeds."""
    keys = [c for c in frame.columns if cfg.known(c) and c != "seed"
            and frame[c].nunique(dropna=True) > 1]
    first = frame.drop_duplicates(["sweep", "trial"]).set_index(["sweep", "trial"])
    several = configs["sweep"].nunique() > 1
    rows = []
    for _, c in configs.head(top).iterrows():
        where = (c["sweep"], c["trial"])
        values = "  ".join(f"{k}={show_value(first.loc[where, k])}" for k in keys)
        std = "-" if pd.isna(c[f"std_{metric}"]) else f"{c[f'std_{metric}']:.4f}"
        name = f"trial {c['trial']:>3}" + (f" of {c['sweep']}" if several else "")
        rows.append(f"  {name}  {metric} {c[f'mean_{metric}']:.4f} ± {std}  "
                    f"({c['seeds']} seeds)  {values}")
    return "\n".join(["per configuration, mean ± std over seeds (best first):", *rows])
