#!/usr/bin/env bash
# Make a private CA and a SuperLink TLS certificate for the given host names / IP addresses.
#
#   deploy/make-certs.sh CERT_DIR HOST_OR_IP [HOST_OR_IP ...]
#
# Writes to CERT_DIR:
#   ca.crt, ca.key           the CA (keep ca.key offline; give ca.crt to every site and to
#                            whoever submits runs: it is public)
#   server.pem, server.key   the SuperLink certificate and key (stay on the SuperLink host)
#
# Every name a SuperNode or the CLI uses in its address (host:port) must be listed: the
# certificate's subjectAltName holds them all (IP:10.8.0.1, DNS:link.example.org, ...).
# 127.0.0.1 and localhost are always added: the SuperLink's own SuperExec connects to
# 127.0.0.1 when the SuperLink listens on 0.0.0.0, and so does a site behind an SSH tunnel.
# An existing CA is reused, so a second call re-issues the server certificate for new
# names without invalidating the ca.crt the sites already hold.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,/^set /p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
shift
days=${CERT_DAYS:-365}
mkdir -p "$dir"
umask 077

san=""
for h in "$@" 127.0.0.1 localhost; do
    [[ ,$san, == *[:,]$h,* ]] && continue
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then
        san+="${san:+,}IP:$h"
    else
        san+="${san:+,}DNS:$h"
    fi
done

if [[ ! -s $dir/ca.key || ! -s $dir/ca.crt ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -nodes -days "$days" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=atm-fl private CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
fi

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" \
    -subj "/CN=$1" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.pem" -days "$days" -sha256 -extfile "$dir/server.ext" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext"
chmod 644 "$dir/ca.crt" "$dir/server.pem"
openssl verify -CAfile "$dir/ca.crt" "$dir/server.pem" >/dev/null
echo "CA:          $dir/ca.crt (give to sites and to the submitting CLI)"
echo "server cert: $dir/server.pem, key $dir/server.key (SuperLink host only), for $san"
