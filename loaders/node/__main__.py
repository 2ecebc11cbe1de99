"""``python -m delibench.loaders.node``: the node service process (``--fetch I FD``: one of its fetch processes).

The rank that starts the service runs this command line, so the process's ``cmdline`` names
``delibench.loaders.node`` (tests and benchmarks find the service by it).
"""

from delibench.loaders.node.server import main

main()
