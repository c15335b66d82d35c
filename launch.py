"""Start a whole ESync / SSGD / ASGD cluster with one command, on this machine or over ssh.

    python launch.py -w 4 --slowdowns 1,1,4,16 -m esync -n lenet --rounds 30 -ld logs
    python launch.py --compare esync,sync,async,local -w 4 --slowdowns 1,1,4,16 \\
        --max-time 60 -ld logs
    python launch.py -H hosts.txt --interface eth0 -m esync --rounds 300 -ld logs

The launcher itself is the package launcher/ (command line, local cluster, ssh, supervision).
"""

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
