"""The words the ranks and the node service exchange, and what each side answers.

Control channel: an abstract Unix socket (``multiprocessing.connection``, the address and key in
:class:`~delibench.loaders.node.config.NodeConfig`). A connection starts with
``("hello", local rank, role)``, answered ``("ok", {"arena": name, "block": bytes})``; the role
``"control"`` marks a rank's own connection (its loss means the rank died), ``"worker"`` a decode
worker's. Then, each answered ``(kind, payload)``:

* ``("open", rank, epoch, start, orders)`` -> ``(OK, token)`` or ``(FAILURE, message)``;
* ``("batch", rank, token, b)`` -> ``(OK, (lease, [(sample, runs), ...]))``, ``(FETCH_ERROR,
  (key, url, cause))``, ``(FAILURE, message)`` or ``(STALE, None)`` (the epoch was closed);
* ``("release", rank, lease)``: not answered; the worker has copied the batch out of the arena;
* ``("close-epoch", rank, token)``, ``("pause", rank)``, ``("leave", rank)``, ``("ping",)`` -> ``(OK, None)``;
* ``("stats", rank)`` -> ``(OK, {"rank": {...}, "node": {...}})``.

Fetch processes (:mod:`~delibench.loaders.node.fetchers`) speak over their own socket pair: they say
``("ready", pid)`` or ``("error", repr)``, take ``("get", request id, sample, runs)`` and
``("stop",)``, and answer ``("done", request id, error or None, meter deltas)``.
"""

from __future__ import annotations

__all__ = ["ANSWER_MARGIN_S", "FAILURE", "FETCH_ERROR", "OK", "STALE"]

#: How much longer than the deadline a rank waits for the service's own answer to a request, so
#: that the service's error (which names the batch and its samples) arrives before the rank gives up.
ANSWER_MARGIN_S = 5.0
#: Reply kinds.
OK, FETCH_ERROR, FAILURE, STALE = "ok", "fetch-error", "failure", "stale"
