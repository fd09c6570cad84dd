# Source at the start of a command on the device machine, from the repository root, with `.whl/` carried:
#
#   source bench/device_setup.sh || exit
#
# Installs the wheels that machine lacks (bash ../shared/tools/device-wheels.sh fetches them here) and
# sets what the benchmarks need there.
# Bytecode is compiled at install: without it every fresh process compiles diffusers and torchao
# from source again, seconds that a Space's pip install does not pay (cold starts measure imports).
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=$PWD:/tmp/site
export CXX=/usr/bin/g++  # the machine's default /opt/gcc links libstdc++ statically: ToolchainError
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
