# Sourced by .ci/install_vllm.sh and .ci/install_router.sh: the life cycle of a venv made once and reused.
# venv_begin NAME DIR STAMP: when DIR is complete (its marker holds STAMP), print its python and exit (the
# caller's last line); else start over (an incomplete earlier attempt or another STAMP; never delete something
# that is not a venv: exit 2 naming NAME, the variable that chose DIR) with a fresh venv and an up-to-date pip.
# venv_end LABEL: write the marker, say how long it took (stderr), print the python (stdout's last line).
venv_begin() {
  VENV_NAME=$1 VENV_DIR=$2 VENV_STAMP=$3 VENV_T0=$(date +%s)
  local mark="$VENV_DIR/.csr-complete"
  if [ -f "$mark" ] && [ "$(cat "$mark")" = "$VENV_STAMP" ] && [ -x "$VENV_DIR/bin/python" ]; then
    echo "$VENV_DIR/bin/python"
    exit 0
  fi
  if [ -e "$VENV_DIR" ]; then
    if [ -f "$VENV_DIR/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV_DIR")" ]; then
      rm -rf "$VENV_DIR"
    else
      echo "$VENV_NAME=$VENV_DIR exists and is not a venv; refusing to overwrite it" >&2
      exit 2
    fi
  fi
  "${PYTHON:-python3}" -m venv "$VENV_DIR"
  "$VENV_DIR/bin/pip" install -q -U pip >&2
}

venv_end() {
  printf '%s' "$VENV_STAMP" > "$VENV_DIR/.csr-complete"
  echo "$1 installed in $(( $(date +%s) - VENV_T0 )) s ($(du -sh "$VENV_DIR" | cut -f1))" >&2
  echo "$VENV_DIR/bin/python"
}
