#!/usr/bin/env bash
# Make one SuperNode authentication key pair per site (ECDSA, NIST P-384, OpenSSH format).
#
#   deploy/make-node-keys.sh KEY_DIR SITE [SITE ...]
#
# Writes KEY_DIR/SITE (private key: stays on that site, passed to flower-supernode with
# --auth-supernode-private-key) and KEY_DIR/SITE.pub (public key: sent to the SuperLink
# operator, who registers it with deploy/register-site.sh). Run it on each site for its own
# name so that the private key never travels. An existing key is kept, not overwritten.
#
# Flower 1.41 reads the private key with OpenSSH's format and accepts NIST curves only
# (P-256/P-384/P-521), not Ed25519 or RSA.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,/^set /p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
shift
mkdir -p "$dir"
for site in "$@"; do
    if [[ ! $site =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "make-node-keys: site name '$site' must be letters, digits, '.', '_' or '-'" >&2
        exit 2
    fi
    if [[ -s $dir/$site ]]; then
        echo "kept     $dir/$site (exists)"
    else
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "atm-fl-$site" -f "$dir/$site"
        echo "created  $dir/$site  and  $dir/$site.pub"
    fi
done
