"""``s4seg bench ...``: each benchmark times one stage or the whole stack; ``report`` holds the
one timing loop, percentile and BENCHMARKS.md writer they share."""
