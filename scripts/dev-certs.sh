#!/usr/bin/env bash
# Development certificates for trying HTTPS and mutual TLS on one machine (openssl, ECDSA P-256):
# a local CA, a server certificate for localhost / 127.0.0.1 / ::1, and a worker client
# certificate (CN worker-1). Never use them in production: the CA key sits beside them.
#
#   scripts/dev-certs.sh [DIR] [WORKER_CN]    (DIR defaults to secrets/tls)
#
# Writes DIR/{ca.crt,ca.key,server.crt,server.key,worker.crt,worker.key}; keys are 0600 and DIR
# and its parent are 0700. Existing files are kept unless FORCE=1.
set -euo pipefail

dir="${1:-secrets/tls}"
worker_cn="${2:-worker-1}"
days="${DAYS:-90}"

if [ -e "$dir/server.crt" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "$dir/server.crt exists; set FORCE=1 to replace the development certificates" >&2
  exit 1
fi
umask 077
mkdir -p "$dir"
chmod 700 "$(dirname "$dir")" "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key "$dir/ca.key"
openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" -subj "/CN=Bulwark development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$dir/ca.crt"

key "$dir/server.key"
openssl req -new -key "$dir/server.key" -subj "/CN=localhost" -out "$tmp/server.csr"
cat >"$tmp/server.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$tmp/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days "$days" -sha256 -extfile "$tmp/server.ext" -out "$dir/server.crt" 2>/dev/null

key "$dir/worker.key"
openssl req -new -key "$dir/worker.key" -subj "/CN=$worker_cn" -out "$tmp/worker.csr"
cat >"$tmp/worker.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=DNS:$worker_cn.workers.local
EXT
openssl x509 -req -in "$tmp/worker.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
  -CAserial "$tmp/ca.srl" -days "$days" -sha256 -extfile "$tmp/worker.ext" -out "$dir/worker.crt" 2>/dev/null

chmod 600 "$dir"/*.key
chmod 644 "$dir"/*.crt
echo "development certificates in $dir (valid $days days): ca.crt, server.crt/.key, worker.crt/.key (CN $worker_cn)"
