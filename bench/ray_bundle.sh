#!/usr/bin/env bash
# Ray Serve for the GPU machine, which reaches no package index and takes 64 MiB a call: ray's wheel
# alone is 77 MB. So two calls on one warm machine (it keeps the checkout's ignored files for 30 s):
#
#   bash bench/ray_bundle.sh                 # here: .whl-ray/ = ray without its Java jars and RLlib, as
#                                            # an xz tarball (28 MB), plus ray[serve]'s dependencies
#   bash bench/ray_bundle.sh install         # there, 1st call carrying .whl-ray: into .ray-site/ what the
#                                            # machine lacks
#   source bench/device_setup.sh && export PYTHONPATH=$PYTHONPATH:$PWD/.ray-site   # there, 2nd call, carrying .whl
set -euo pipefail
RAY=2.60.0
if [ "${1:-}" = install ]; then
  mkdir -p .ray-site
  tar xJf .whl-ray/ray.tar.xz -C .ray-site
  # Only the dependencies the machine lacks: its own copies (protobuf, grpcio, ...) serve its other packages.
  missing=$(python3 - .whl-ray/*.whl <<'EOF'
import importlib.util, sys, zipfile
probe = {"google_api_core": "google.api_core", "google_auth": "google.auth", "googleapis_common_protos": "google.api",
         "protobuf": "google.protobuf", "opencensus_context": "opencensus.common.runtime_context",
         "opentelemetry_sdk": "opentelemetry.sdk", "opentelemetry_proto": "opentelemetry.proto",
         "opentelemetry_exporter_prometheus": "opentelemetry.exporter.prometheus",
         "opentelemetry_semantic_conventions": "opentelemetry.semconv"}
for wheel in sys.argv[1:]:
    name = wheel.split("/")[-1].split("-")[0]
    module = probe.get(name)
    if module is None:
        with zipfile.ZipFile(wheel) as z:
            top = [n for n in z.namelist() if n.endswith(".dist-info/top_level.txt")]
            module = z.read(top[0]).decode().split()[0] if top else name
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    # grpcio_reflection's generated code wants the grpcio it was built with.
    if not found or name == "grpcio":
        print(wheel)
EOF
)
  echo "installing: $missing"
  [ -z "$missing" ] || python3 -m pip install -q --no-index --no-deps --no-cache-dir --target .ray-site $missing
  exit 0
fi
rm -rf .whl-ray && mkdir -p .whl-ray
grep -qx '/.whl-ray/' .git/info/exclude 2>/dev/null || printf '/.whl-ray/\n/.ray-site/\n' >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
tmp=$(mktemp -d)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$tmp" "ray[serve]==$RAY" 2>&1 | grep -v "is ignored" || true
(cd "$tmp" && mkdir ray-files && unzip -q ray-$RAY-*.whl -d ray-files && rm -rf ray-files/ray/jars ray-files/ray/rllib \
  && tar cf - -C ray-files . | xz -9 -T2 > ray.tar.xz)
mv "$tmp/ray.tar.xz" .whl-ray/
# What .whl/ already brings (bench/device_setup.sh), and what Ray Serve does not use here (runtime
# environments, profiling, the optional uvloop).
skip='^(ray|numpy|pydantic|pydantic_core|fastapi|starlette|uvicorn|typing_extensions|annotated_types|typing_inspection|opentelemetry_api|virtualenv|distlib|python_discovery|platformdirs|py_spy|uvloop)-'
for wheel in "$tmp"/*.whl; do
  basename "$wheel" | grep -Eq "$skip" || mv "$wheel" .whl-ray/
done
rm -rf "$tmp"
du -sh .whl-ray
