#!/usr/bin/env bash
# A private CA and a server certificate signed by it, for mosquitto's TLS listener.
#   bash config/mosquitto/make-ca.sh <out dir> [server hostname, default localhost] [server IP, default 127.0.0.1]
# Writes ca.crt ca.key server.crt server.key (keys 0600). Clients need only ca.crt
# (MQTT_CA_FILE). tests/e2e/test_broker_acl_tls.py runs this script.
set -euo pipefail
out=${1:?out dir}; host=${2:-localhost}; ip=${3:-127.0.0.1}
mkdir -p "$out"; cd "$out"; umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=bracketgate test CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:%s,IP:%s\nextendedKeyUsage=serverAuth\n' "$host" "$ip" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.crt
echo "$out: ca.crt server.crt server.key (CN=$host, IP $ip)"
