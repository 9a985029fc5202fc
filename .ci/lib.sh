# Sourced by the CI scripts: from the repository root, sets $target (the cargo target
# directory, absolute) and $venv (one Python environment with .ci/requirements.txt,
# installed once and again whenever that file changes).
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
venv="$target/ci-venv"
if ! cmp -s .ci/requirements.txt "$venv/requirements.txt" 2>/dev/null || [ ! -x "$venv/bin/grpcurl" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt
  cp .ci/requirements.txt "$venv/requirements.txt"
fi
