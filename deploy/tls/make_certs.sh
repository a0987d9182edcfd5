#!/usr/bin/env bash
# Make a private CA, a cloud (server) certificate and one client certificate per edge, with openssl.
#
#   deploy/tls/make_certs.sh OUT_DIR [--server-name NAME]... [--node NODE_ID]... [--days N]
#
# OUT_DIR gets ca.pem/ca.key, server.pem/server.key (SANs: every --server-name, plus localhost
# and 127.0.0.1) and <node>.pem/<node>.key per --node (CN and SAN DNS = node id: with mutual TLS
# the cloud serves a node only if its certificate names its token's node id). Keys are 0600; keep ca.key
# offline. Cloud YAML: tls.cert=server.pem, tls.key=server.key (+ tls.client_ca=ca.pem for mutual
# TLS); edges: --tls-ca ca.pem [--tls-cert NODE.pem --tls-key NODE.key] [--tls-server-name NAME].
# The same ca.pem / server.pem / server.key serve flower-superlink --ssl-ca-certfile/--ssl-certfile/
# --ssl-keyfile and flower-supernode --root-certificates.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
names=(localhost)
nodes=()
days=825
while [ $# -gt 0 ]; do
  case $1 in
    --server-name) names+=("$2"); shift 2 ;;
    --node) nodes+=("$2"); shift 2 ;;
    --days) days=$2; shift 2 ;;
    *) echo "make_certs.sh: unknown argument $1" >&2; usage ;;
  esac
done
command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found" >&2; exit 1; }
mkdir -p "$out"
umask 077

san="IP:127.0.0.1"
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ ]]; then san="$san,IP:$n"; else san="$san,DNS:$n"; fi
done

if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days "$days" -subj "/CN=edgegan CA" \
    -keyout "$out/ca.key" -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

sign() {  # sign NAME CN EXTFILE-CONTENT
  local name=$1 cn=$2 ext=$3
  openssl req -newkey rsa:2048 -sha256 -nodes -subj "/CN=$cn" -keyout "$out/$name.key" -out "$out/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" > "$out/$name.ext"
  openssl x509 -req -sha256 -days "$days" -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/$name.pem" -extfile "$out/$name.ext" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
}

sign server "${names[1]:-localhost}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"
for node in "${nodes[@]}"; do
  sign "$node" "$node" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectAltName=DNS:$node"
done
chmod 0644 "$out"/*.pem
echo "wrote $out: ca.pem server.pem (SAN $san)${nodes[*]:+ and client certificates for ${nodes[*]}}"
