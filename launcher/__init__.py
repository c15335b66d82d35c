"""The launcher behind ``python launch.py``: one command starts a whole cluster.

cli.py          the command line (launch.py's flags, checks, ``main``)
devices.py      ``--slowdowns`` lists, the device probe and the device unit T0
console.py      rank 0's progress lines on the console
local.py        one mode's cluster: which processes, where, restarts, the end
ssh.py          other hosts over ssh (``-H``): host file, probing, remote process groups
supervision.py  process supervision shared with the benchmarks and the tests
"""
