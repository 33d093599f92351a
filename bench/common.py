"""What the benchmarks share: the same low-field series on disk, split for 1 and 4 associations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.sample import Acquisition, build_series, load_brain, write_series


@dataclass
class BenchSeries:
    series: list[list[Path]]

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.series)

    @property
    def one_association(self) -> list[list[Path]]:
        return [[f for s in self.series for f in s]]

    @property
    def four_associations(self) -> list[list[Path]]:
        """Whole series per association, as four scanners would send them."""
        quarter = max(1, len(self.series) // 4)
        groups = [self.series[i : i + quarter] for i in range(0, len(self.series), quarter)][:4]
        return [[f for s in group for f in s] for group in groups]


def write_bench_series(folder: Path, count: int, rows: int, first_seed: int) -> BenchSeries:
    """``count`` axial 0.36 T T1 series of 30 slices from nilearn's MNI152 brain."""
    brain = load_brain()
    return BenchSeries(
        [
            write_series(
                build_series(Acquisition(rows=rows, columns=rows, seed=first_seed + i), brain),
                folder / f"s{i}",
            )
            for i in range(count)
        ]
    )
