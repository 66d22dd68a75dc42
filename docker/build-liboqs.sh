#!/bin/sh
# Builds liboqs (ML-DSA-87 only, shared) from its release tarball into /opt/liboqs,
# for the liboqs-python crypto backend. Run by the Dockerfile's builder stage.
#
#   build-liboqs.sh VERSION [SHA256]
#
# Never fails the image build: when the source cannot be fetched (no network, the
# release missing, a checksum mismatch) or the build fails, it says so in one line
# and leaves /opt/liboqs/lib empty; the image then uses the cryptography backend.
set -eu

version="${1:-}"
sha256="${2:-}"
mkdir -p /opt/liboqs/lib /opt/liboqs/include

fallback() {
    echo "liboqs source unavailable: using the cryptography backend ($1)"
    rm -rf /opt/liboqs/lib/* /opt/liboqs/include/* /tmp/liboqs /tmp/liboqs.tar.gz
    exit 0
}

if [ -z "$version" ]; then
    echo "liboqs: not requested (LIBOQS_VERSION is empty): using the cryptography backend"
    exit 0
fi

url="https://github.com/open-quantum-safe/liboqs/archive/refs/tags/${version}.tar.gz"
echo "liboqs: fetching ${url}"
python3 - "$url" /tmp/liboqs.tar.gz <<'PY' || fallback "cannot fetch ${url}"
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=30) as reply, open(sys.argv[2], "wb") as out:
    out.write(reply.read())
PY
if [ -n "$sha256" ]; then
    echo "${sha256}  /tmp/liboqs.tar.gz" | sha256sum -c - >/dev/null ||
        fallback "checksum mismatch: the tarball is not ${sha256}"
else
    echo "liboqs: no LIBOQS_SHA256 given: the tarball is not checked"
fi

export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends \
    cmake ninja-build gcc libc6-dev >/dev/null; } || fallback "cannot install cmake, ninja, gcc"

mkdir -p /tmp/liboqs
tar -xzf /tmp/liboqs.tar.gz -C /tmp/liboqs --strip-components=1 || fallback "bad tarball"
cmake -S /tmp/liboqs -B /tmp/liboqs/build -GNinja \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=/opt/liboqs \
    -DCMAKE_INSTALL_LIBDIR=lib \
    -DBUILD_SHARED_LIBS=ON \
    -DOQS_BUILD_ONLY_LIB=ON \
    -DOQS_DIST_BUILD=ON \
    -DOQS_USE_OPENSSL=OFF \
    -DOQS_MINIMAL_BUILD="SIG_ml_dsa_87" >/dev/null || fallback "cmake failed"
cmake --build /tmp/liboqs/build --parallel >/dev/null || fallback "the build failed"
cmake --install /tmp/liboqs/build >/dev/null || fallback "the install failed"
rm -rf /tmp/liboqs /tmp/liboqs.tar.gz
echo "liboqs ${version}: built into /opt/liboqs: the image uses the liboqs-python backend"
