"""Stand-in for ansible-test's get-pip.py bootstrap script.

ansible-test downloads get-pip.py from a server that this project's machines
cannot reach.  This does the same job with what Python ships: ensurepip, then
the pip version ansible-test asked for, from the package index.
"""
import subprocess
import sys

# get-pip.py's own options; pip install does not know them.
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")

args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
