"""Draw the README's figure, COINCIDE's 20 % of the CPU demo, from the committed per-cluster table.

    python tools/readme_figure.py    # reads bench/results/demo_default/coincide_clusters.csv, writes nbs/images/selection.png
"""
from pathlib import Path
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pandas as pd
from coincide.selection import plot_budget

ROOT = Path(__file__).resolve().parent.parent

def selection_figure(table:pd.DataFrame, # one row per cluster: size, S, D, P, allocated, taken
                    ) -> plt.Figure:
    "Where the budget went (clusters by P) beside the clusters' transferability and density."
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    plot_budget(table, ax=left)
    left.set_title(f"{table.taken.sum():,} of {table['size'].sum():,} records, {len(table)} clusters")
    pts = right.scatter(table.D, table.S, s=8 + table['size'] / 4, c=table.taken / table['size'], cmap='viridis', vmin=0, vmax=1)
    fig.colorbar(pts, ax=right, label='share of the cluster kept')
    right.set_xlabel('density D'); right.set_ylabel('transferability S'); right.set_title('dot size: cluster size')
    fig.tight_layout()
    return fig

if __name__ == '__main__':
    table = pd.read_csv(ROOT/'bench'/'results'/'demo_default'/'coincide_clusters.csv')
    selection_figure(table).savefig(ROOT/'nbs'/'images'/'selection.png', dpi=90, metadata={'Software': None})
