"""The bottom layer: what every other part of ``nca`` may use and which uses nothing of it.

``errors`` (the one user-facing exception), ``files`` (atomic outputs, hashes), ``device``
(``--device`` resolution), ``seeds`` (fire-mask seed streams), ``firemask`` (the stochastic
update mask), ``progress`` (bars on a terminal, plain lines in logs), ``sizes`` (memory sizes
as text), ``machine`` (CPU name and feature flags, peak-memory meters), ``schema``
(dataclass-driven validation of settings) and ``resources`` (the kernel sources and recipes
shipped with the package). Nothing here imports torch at module level except ``firemask``.
"""
