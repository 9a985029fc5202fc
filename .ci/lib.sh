# Sourced by the CI scripts: from the repository root, sets $target (the cargo target
# directory, absolute) and $venv (one Python environment with .ci/requirements.txt,
# installed once and again whenever it or the examples' requirements it includes change).
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
venv="$target/ci-venv"
wanted=$(cat .ci/requirements.txt examples/python/requirements.txt)
if [ "$wanted" != "$(cat "$venv/requirements.txt" 2>/dev/null)" ] || [ ! -x "$venv/bin/grpcurl" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt
  echo "$wanted" >"$venv/requirements.txt"
fi
