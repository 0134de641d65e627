#!/usr/bin/env bash
# Fetches a pinned Apache Kafka release for `eventflow-bench compare --targets kafka`,
# checks it against the SHA-512 Apache publishes beside it, unpacks it, and prints the
# KAFKA_HOME to export.
#
#   bench-harness/fetch-kafka.sh [TARGET_DIR]      (default: target/kafka)
#   export KAFKA_HOME=...                           (the script's last line says what)
#
# The checksum: this script does not carry one. It downloads the release's `.sha512` file
# from the same Apache site and verifies the tarball against it, so what is checked is that
# the download is intact and the one the mirror publishes, not a digest the script's authors
# vouch for (it was written on a machine without internet access, where no release could be
# fetched to take a digest from). For a signature check, verify the `.asc` with the KEYS of
# https://downloads.apache.org/kafka/KEYS (gpg --verify); this script does not.
#
# Apache's `.sha512` files come in two shapes, both read here: `sha512sum`'s
# (`HEX  NAME`) and `gpg --print-md SHA512`'s (`NAME: HEX` with the hex in space-separated,
# upper-case groups, possibly wrapped over lines).
#
# Environment:
#   KAFKA_VERSION  release to fetch (default below); Scala 2.13 builds only.
#   KAFKA_MIRROR   base URL to try first (default https://downloads.apache.org/kafka); the
#                  archive (https://archive.apache.org/dist/kafka), which keeps every
#                  release, is tried next. KAFKA_ARCHIVE overrides that second URL.
#                  Point both at an unreachable address to see the offline failure.
#
# Needs curl (or wget), sha512sum and tar. Java (17 for Kafka 4, 11+ for 3.9) runs it.
set -euo pipefail

version=${KAFKA_VERSION:-3.9.1}
scala=2.13
name="kafka_${scala}-${version}"
mirror=${KAFKA_MIRROR:-https://downloads.apache.org/kafka}
archive=${KAFKA_ARCHIVE:-https://archive.apache.org/dist/kafka}
target=${1:-target/kafka}

die() {
    echo "fetch-kafka.sh: $*" >&2
    exit 1
}

for tool in sha512sum tar; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if command -v curl >/dev/null; then
    fetch() { curl --fail --silent --show-error --location --connect-timeout 15 --output "$2" "$1"; }
elif command -v wget >/dev/null; then
    fetch() { wget --quiet --timeout=15 --tries=1 --output-document="$2" "$1"; }
else
    die "neither curl nor wget found"
fi

home="$target/$name"
if [[ -x $home/bin/kafka-server-start.sh ]]; then
    echo "Kafka $version is already in $home" >&2
    echo "export KAFKA_HOME=$(cd "$home" && pwd)"
    exit 0
fi

mkdir -p "$target"
work=$(mktemp -d "$target/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT

# Both files from the first site that has both.
fetched=
tried=()
for base in "$mirror" "$archive"; do
    url="$base/$version/$name.tgz"
    tried+=("$url")
    echo "fetching $url" >&2
    if fetch "$url" "$work/$name.tgz" && fetch "$url.sha512" "$work/$name.tgz.sha512"; then
        fetched=$base
        break
    fi
    rm -f "$work/$name.tgz" "$work/$name.tgz.sha512"
done
if [[ -z $fetched ]]; then
    die "could not download Kafka $version from any of: ${tried[*]} (no network? set KAFKA_MIRROR to a reachable mirror)"
fi

# The published digest, in either shape, as 128 lower-case hex digits.
expected=$(
    tr -d '\r' <"$work/$name.tgz.sha512" | awk -v name="$name.tgz" '
        # sha512sum: "HEX  NAME" or "HEX *NAME" on one line.
        NF == 2 && $1 ~ /^[0-9A-Fa-f]+$/ && length($1) == 128 { print $1; exit }
        # gpg --print-md: "NAME: HEX HEX ..." possibly wrapped; join everything after the colon.
        {
            line = $0
            if (!started) {
                colon = index(line, ":")
                if (colon == 0) next
                line = substr(line, colon + 1)
                started = 1
            }
            gsub(/[ \t]/, "", line)
            hex = hex line
        }
        END { if (hex != "") print hex }
    ' | tr 'A-F' 'a-f'
)
[[ $expected =~ ^[0-9a-f]{128}$ ]] ||
    die "$fetched/$version/$name.tgz.sha512 holds no SHA-512 digest I can read"
actual=$(sha512sum "$work/$name.tgz" | cut -d' ' -f1)
if [[ $actual != "$expected" ]]; then
    die "SHA-512 mismatch for $name.tgz from $fetched: expected $expected, got $actual"
fi
echo "SHA-512 matches $fetched/$version/$name.tgz.sha512" >&2

tar -xzf "$work/$name.tgz" -C "$work"
[[ -x $work/$name/bin/kafka-server-start.sh ]] || die "$name.tgz does not hold $name/bin/kafka-server-start.sh"
rm -rf "$home"
mv "$work/$name" "$home"
echo "Kafka $version unpacked in $home" >&2
echo "export KAFKA_HOME=$(cd "$home" && pwd)"
