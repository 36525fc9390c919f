#!/usr/bin/env bash
# Builds polder's real-text corpus from Debian documentation packages, without installing them: each package
# is fetched with `apt-get download` and unpacked with `dpkg -x` under data_work/root/<package>, then
# extract_corpus.py writes data_work/corpus/<lang>.jsonl and manifest.json. Idempotent: a .deb already in
# data_work/debs is not fetched again and an unpacked tree is not unpacked again. See docs/DATA.md.
#
# Usage: scripts/data/get_corpus.sh [work folder, default <repo>/data_work]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${1:-$repo/data_work}"
debs="$work/debs"
root="$work/root"
out="$work/corpus"

packages=(
  libreoffice-help-nl      # Dutch LibreOffice help
  installation-guide-amd64 # Debian installation guide, all translations in one package
  manpages-nl manpages-nl-dev
  debian-edu-doc-nl aptitude-doc-nl debian-faq-nl
  debian-handbook          # all translations; the Dutch one is mostly English: pages are filtered by language
  gimp-help-nl lilypond-doc-html-nl # mostly English: only pages detected as Dutch are kept
  gimp-help-common         # only for its copyright file: gimp-help-nl ships none of its own
)

die() { echo "get_corpus: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg; do
  command -v "$tool" >/dev/null || die "$tool not found (this script needs a Debian/Ubuntu system)"
done
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root or install sudo (apt-get update needs root)"
  sudo="sudo"
fi
if ! command -v python3 >/dev/null; then
  # Minimal Debian images have no Python; the extractor needs only its standard library.
  echo "get_corpus: installing python3 (needed by extract_corpus.py)" >&2
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends python3 >/dev/null; } \
    || die "cannot install python3"
fi

mkdir -p "$debs" "$root" "$out"
# apt's sandbox user must be able to write the download folder, or apt warns on every file.
chmod 0777 "$debs" 2>/dev/null || true

have_deb() { compgen -G "$debs/${1}_*.deb" >/dev/null; }

missing=()
for p in "${packages[@]}"; do have_deb "$p" || missing+=("$p"); done

if [ "${#missing[@]}" -gt 0 ]; then
  # Refresh the package lists only when something must be fetched and apt does not know a package yet.
  for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
      echo "get_corpus: apt does not know $p yet, running apt-get update" >&2
      $sudo apt-get update -qq || die "apt-get update failed"
      break
    fi
  done
  for p in "${missing[@]}"; do
    echo "get_corpus: downloading $p" >&2
    if ! (cd "$debs" && $sudo apt-get download -q "$p" >/dev/null 2>"$debs/.apt-err-$p"); then
      die "cannot download package $p: $(grep -E '^E:' "$debs/.apt-err-$p" | head -n1)"
    fi
    rm -f "$debs/.apt-err-$p"
    have_deb "$p" || die "cannot download package $p: apt-get download produced no .deb"
  done
fi

for p in "${packages[@]}"; do
  deb="$(ls "$debs/${p}"_*.deb | sort | tail -n1)"
  stamp="$root/$p/.unpacked-from"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(basename "$deb")" ]; then
    continue
  fi
  echo "get_corpus: unpacking $(basename "$deb")" >&2
  rm -rf "${root:?}/$p"
  mkdir -p "$root/$p"
  dpkg -x "$deb" "$root/$p" || die "cannot unpack $deb"
  basename "$deb" >"$stamp"
done

python3 "$here/extract_corpus.py" --root "$root" --out "$out"
echo "get_corpus: corpus in $out (manifest: $out/manifest.json)" >&2
