"""``kproc bench``: the latency suite (SPEC §7), shipped inside the package.

Every comparison runs side by side in one invocation; every latency
distribution is an HdrHistogram; tables show n, p50, p90, p99, p99.9 and
max, say which way is better, carry ratios only between rows that measure
the same thing, and end with the issue targets marked PASS or MISS.

Modules: ``deps`` (the optional packages of the ``bench`` extra), ``hist``
(HdrHistograms, their summaries and cyclictest-style files), ``report``
(tables), ``targets`` (the issue targets, in one table), ``compare`` (two
runs), ``meta`` (what a run ran on), ``plot`` (the PNG), ``progress``
(bars), ``harness`` (cases in their own process, the run), ``case`` (the
child's entry point), ``common`` (what cases share), and one case module
per family: ``pingpong``, ``create``, ``workers``, ``lateness``,
``hotplug``, ``pool``.
Context: the command-line process; each case runs in a process of its own.
"""
