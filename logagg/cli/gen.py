"""`logagg gen`: deterministic synthetic events for benchmarks and demos."""

import sys
from typing import Annotated

import typer


def gen(
    count: Annotated[int, typer.Argument(min=0, metavar="COUNT", help="How many lines to write.")],
    dup_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99, metavar="SHARE", help="Share of lines that re-send an earlier event."
        ),
    ] = 0.2,
    topics: Annotated[int, typer.Option(min=1, metavar="N", help="How many topics.")] = 10,
    seed: Annotated[
        int, typer.Option(metavar="N", help="The same seed gives the same lines.")
    ] = 42,
) -> None:
    """Write deterministic synthetic events, for benchmarks and demos.

    The lines go to stdout, the count of unique events to stderr. The same arguments always
    give the same bytes.
    """
    from logagg.gen import GenStats, generate

    stats = GenStats()
    out = sys.stdout
    batch: list[str] = []
    for line in generate(count, dup_rate=dup_rate, topics=topics, seed=seed, stats=stats):
        batch.append(line)
        if len(batch) >= 10_000:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch))
    out.flush()
    sys.stderr.write(f"{stats.unique} unique events in {stats.lines} lines\n")
