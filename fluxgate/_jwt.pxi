# Included into _core.pyx: JWT verification (docs/jwt.md).
#
# JWS compact serialization (RFC 7515 §7.1) of a JWT (RFC 7519), verified against
# public keys prepared once per JWKS generation, with the signature math in OpenSSL's
# libcrypto (linked directly: EVP_PKEY_verify on a context set up once per key and
# algorithm, and RS* on libcrypto's bignum primitives with a per-key Montgomery context,
# _rsa.pxi; bench/RESULTS.md has the comparison with the `cryptography` package).
#
# Order of checks in JwtVerifier.verify (each failure raises TokenError(reason)):
#
# 1. size (max_token_bytes); exactly two '.', header and payload non-empty;
# 2. the verified-token cache (keyed by the token's tail, a hit compared byte for byte
#    with the whole token); a hit re-does the time checks;
# 3. header (a header part byte-identical to the last one that led to a good signature
#    reuses its alg and key, until set_keys or flush): strict base64url (RFC 4648 §5:
#    canonical, no padding) of a JSON object;
#    `alg` a string in the allowlist ("none", in any casing, never is; HS* only with a
#    configured secret); `crit` refused (no extension is understood, RFC 7515
#    §4.1.11); `b64` other than true refused (RFC 7797); `kid` a short printable
#    string; `jku`, `x5u`, `jwk`, `x5c` are never read, so a token cannot bring its
#    own key (RFC 8725 §3.10);
# 4. key: by `kid`; the key's type/curve/`alg`/`use` must allow the token's `alg`, so
#    an RSA key never verifies an HS256 token and a P-256 key never an ES384 one.
#    Without a `kid`: the one compatible key of the set, if there is exactly one. An
#    unknown `kid` is reported only after the payload's `iss` and time claims pass, so
#    the caller may ask the master for a refresh without letting junk tokens do it;
# 5. signature: RSA PKCS#1 v1.5 (RS*); RSA-PSS, MGF1 with the same hash, any salt
#    length (PS*); ECDSA as the JWS raw r||s of exactly twice the coordinate size, r
#    and s in [1, n-1] (ES*; DER is refused); Ed25519/Ed448 (EdDSA); HMAC compared in
#    constant time (HS*);
# 6. claims: a JSON object; `exp` required (unless configured off), `nbf`, `iat`, each
#    a JSON number (not a string or boolean) in [0, 253402300799], checked with the
#    leeway; `iss` exact; `aud` a string or an array of strings holding a configured
#    audience; `sub`, when present, a string. With a claim selection (``claims=``) only
#    those and the selected ones are built, the rest checked to be JSON (_select_members).

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.object cimport PyObject
from libc.math cimport INFINITY
from libc.string cimport memchr, memcpy

import orjson

from fluxgate.errors import TokenError

cdef object _json_loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_PKEY
    ctypedef struct EVP_PKEY_CTX
    ctypedef struct EVP_MD
    ctypedef struct EVP_MD_CTX
    ctypedef struct OSSL_LIB_CTX
    ctypedef struct ENGINE
    cdef enum:
        EVP_PKEY_RSA
        EVP_PKEY_EC
        EVP_PKEY_ED25519
        EVP_PKEY_ED448
        EVP_MAX_MD_SIZE
    EVP_MD* EVP_MD_fetch(OSSL_LIB_CTX* ctx, const char* algorithm,
                         const char* properties)
    int EVP_Digest(const void* data, size_t count, unsigned char* md,
                   unsigned int* size, const EVP_MD* type, ENGINE* impl)
    EVP_MD_CTX* EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX* ctx)
    int EVP_DigestVerifyInit(EVP_MD_CTX* ctx, EVP_PKEY_CTX** pctx, const EVP_MD* type,
                             ENGINE* e, EVP_PKEY* pkey)
    int EVP_DigestVerify(EVP_MD_CTX* ctx, const unsigned char* sig, size_t siglen,
                         const unsigned char* tbs, size_t tbslen)
    EVP_PKEY_CTX* EVP_PKEY_CTX_new(EVP_PKEY* pkey, ENGINE* e)
    void EVP_PKEY_CTX_free(EVP_PKEY_CTX* ctx)
    int EVP_PKEY_verify_init(EVP_PKEY_CTX* ctx)
    int EVP_PKEY_verify(EVP_PKEY_CTX* ctx, const unsigned char* sig, size_t siglen,
                        const unsigned char* tbs, size_t tbslen)
    int EVP_PKEY_CTX_set_signature_md(EVP_PKEY_CTX* ctx, const EVP_MD* md)
    void EVP_PKEY_free(EVP_PKEY* pkey)
    int EVP_PKEY_get_base_id(const EVP_PKEY* pkey)
    int EVP_PKEY_get_bits(const EVP_PKEY* pkey)
    int EVP_PKEY_get_size(const EVP_PKEY* pkey)
    int EVP_PKEY_get_group_name(const EVP_PKEY* pkey, char* name, size_t name_sz,
                                size_t* gname_len)

cdef extern from "openssl/rsa.h" nogil:
    cdef enum:
        RSA_PKCS1_PADDING
        RSA_PKCS1_PSS_PADDING
        RSA_PSS_SALTLEN_AUTO
    int EVP_PKEY_CTX_set_rsa_padding(EVP_PKEY_CTX* ctx, int pad_mode)
    int EVP_PKEY_CTX_set_rsa_pss_saltlen(EVP_PKEY_CTX* ctx, int saltlen)
    int EVP_PKEY_CTX_set_rsa_mgf1_md(EVP_PKEY_CTX* ctx, const EVP_MD* md)

cdef extern from "openssl/x509.h" nogil:
    EVP_PKEY* d2i_PUBKEY(EVP_PKEY** a, const unsigned char** pp, long length)

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MAC
    ctypedef struct EVP_MAC_CTX
    ctypedef struct OSSL_PARAM:
        pass
    EVP_MAC* EVP_MAC_fetch(OSSL_LIB_CTX* libctx, const char* algorithm,
                           const char* properties)
    EVP_MAC_CTX* EVP_MAC_CTX_new(EVP_MAC* mac)
    void EVP_MAC_CTX_free(EVP_MAC_CTX* ctx)
    int EVP_MAC_init(EVP_MAC_CTX* ctx, const unsigned char* key, size_t keylen,
                     const OSSL_PARAM* params)
    int EVP_MAC_update(EVP_MAC_CTX* ctx, const unsigned char* data, size_t datalen)
    int EVP_MAC_final(EVP_MAC_CTX* ctx, unsigned char* out, size_t* outl, size_t outsize)
    const char* EVP_MD_get0_name(const EVP_MD* md)

cdef extern from "openssl/params.h" nogil:
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char* key, char* buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void* a, const void* b, size_t len)

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

include "_rsa.pxi"

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)
    bint PyObject_IS_GC(object obj)
    dict _PyDict_NewPresized(Py_ssize_t minused)

cdef extern from *:
    """
    static inline int fg_ctz32(unsigned int x) { return __builtin_ctz(x); }
    /* The index of the lowest-addressed byte flagged in a non-zero mask of a word loaded
       from memory; 0 (the word's first byte) where memory order is not the bits' order. */
    static inline int fg_first_flagged_byte(unsigned long long m) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_ctzll(m) >> 3;
    #else
        return 0;
    #endif
    }
    """
    int fg_ctz32(unsigned int x) noexcept nogil
    int fg_first_flagged_byte(unsigned long long m) noexcept nogil


# ---- tables --------------------------------------------------------------------------

cdef tuple _JWT_REASONS = (
    "ok",
    "malformed",
    "token_too_large",
    "alg_not_allowed",
    "crit_unsupported",
    "unknown_kid",
    "key_alg_mismatch",
    "jwks_unavailable",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "missing_claim",
    "invalid_claim",
    "wrong_issuer",
    "wrong_audience",
)

# Case-sensitive, as RFC 7515 §4.1.1 says: "none", "None", "rs256" are simply unknown.
cdef dict _ALG_BITS = {
    "RS256": FG_JWT_RS256, "RS384": FG_JWT_RS384, "RS512": FG_JWT_RS512,
    "PS256": FG_JWT_PS256, "PS384": FG_JWT_PS384, "PS512": FG_JWT_PS512,
    "ES256": FG_JWT_ES256, "ES384": FG_JWT_ES384, "EdDSA": FG_JWT_EDDSA,
    "HS256": FG_JWT_HS256, "HS384": FG_JWT_HS384, "HS512": FG_JWT_HS512,
}

cdef enum:
    _RSA_ALGS = (FG_JWT_RS256 | FG_JWT_RS384 | FG_JWT_RS512
                 | FG_JWT_PS256 | FG_JWT_PS384 | FG_JWT_PS512)
    _PSS_ALGS = FG_JWT_PS256 | FG_JWT_PS384 | FG_JWT_PS512
    _PKCS1_ALGS = FG_JWT_RS256 | FG_JWT_RS384 | FG_JWT_RS512
    _SHA256_ALGS = FG_JWT_RS256 | FG_JWT_PS256 | FG_JWT_ES256 | FG_JWT_HS256
    _SHA384_ALGS = FG_JWT_RS384 | FG_JWT_PS384 | FG_JWT_ES384 | FG_JWT_HS384
    _SHA512_ALGS = FG_JWT_RS512 | FG_JWT_PS512 | FG_JWT_HS512
    _MIN_RSA_BITS = 2048          # RFC 7518 §3.3: "2048 bits or larger MUST be used"
    _MAX_RSA_BITS = 16384
    _EC_MAX_COORD = 48            # P-384

# Key kinds (what a public key is, whatever the JWK said).
cdef enum:
    _K_RSA = 1
    _K_P256 = 2
    _K_P384 = 3
    _K_ED25519 = 4
    _K_ED448 = 5

# Group orders n (SEC 2 §2.4.2, §2.5.1), big-endian: r and s must lie in [1, n-1].
cdef const unsigned char* _P256_ORDER = <const unsigned char*>(
    b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff"
    b"\xbc\xe6\xfa\xad\xa7\x17\x9e\x84\xf3\xb9\xca\xc2\xfc\x63\x25\x51"
)
cdef const unsigned char* _P384_ORDER = <const unsigned char*>(
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xc7\x63\x4d\x81\xf4\x37\x2d\xdf"
    b"\x58\x1a\x0d\xb2\x48\xb0\xa7\x7a\xec\xec\x19\x6a\xcc\xc5\x29\x73"
)

cdef const EVP_MD* _SHA256 = NULL
cdef const EVP_MD* _SHA384 = NULL
cdef const EVP_MD* _SHA512 = NULL


cdef int _init_digests() except -1:
    # Fetched once: the implicit fetch of EVP_sha256() would repeat on every operation.
    global _SHA256, _SHA384, _SHA512
    _SHA256 = EVP_MD_fetch(NULL, b"SHA256", NULL)
    _SHA384 = EVP_MD_fetch(NULL, b"SHA384", NULL)
    _SHA512 = EVP_MD_fetch(NULL, b"SHA512", NULL)
    if _SHA256 == NULL or _SHA384 == NULL or _SHA512 == NULL:
        raise ImportError("libcrypto has no SHA-2 digests")
    return 0


_init_digests()

# HMAC (RFC 7518 §3.2), fetched once like the digests: HMAC()'s one-shot fetched the MAC,
# made a context and set the key on every call (~22,000 instructions a token, the MAC
# itself a few thousand).
cdef EVP_MAC* _HMAC = EVP_MAC_fetch(NULL, b"HMAC", NULL)
if _HMAC == NULL:
    raise ImportError("libcrypto has no HMAC")


cdef inline const EVP_MD* _digest_of(unsigned int alg) noexcept nogil:
    if alg & _SHA256_ALGS:
        return _SHA256
    if alg & _SHA384_ALGS:
        return _SHA384
    if alg & _SHA512_ALGS:
        return _SHA512
    return NULL


def jwt_alg_mask(names, /):
    """The JwtAlg bit mask of JWS algorithm names; ValueError names an unknown one."""
    cdef unsigned int mask = 0
    for name in names:
        bit = _ALG_BITS.get(name) if isinstance(name, str) else None
        if bit is None:
            raise ValueError(f"unsupported JWS algorithm {name!r}")
        mask |= <unsigned int>bit
    return mask


def jwt_alg_names(unsigned int mask, /):
    """The algorithm names in a JwtAlg mask, in a fixed order."""
    return tuple(name for name, bit in _ALG_BITS.items() if mask & <unsigned int>bit)


# ---- keys ----------------------------------------------------------------------------

cdef inline bint _all_zero(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef unsigned char acc = 0
    cdef Py_ssize_t i
    for i in range(n):
        acc |= p[i]
    return acc == 0


cdef Py_ssize_t _der_integer(const unsigned char* v, Py_ssize_t n,
                             unsigned char* out) noexcept nogil:
    # X.690 §8.3: minimal two's-complement INTEGER of unsigned big-endian v[0:n].
    cdef Py_ssize_t i = 0, body
    cdef int pad
    while i < n - 1 and v[i] == 0:
        i += 1
    pad = 1 if v[i] & 0x80 else 0
    body = n - i + pad
    out[0] = 0x02
    out[1] = <unsigned char>body
    if pad:
        out[2] = 0
    memcpy(out + 2 + pad, v + i, n - i)
    return 2 + body


cdef class JwtKey:
    """One public key, parsed and prepared for the algorithms it may verify.

    ``JwtKey(kid, algs, spki_der)``: ``kid`` a str or None, ``algs`` a JwtAlg mask
    (the algorithms the JWK allows, see fluxgate/auth/jwk.py), ``spki_der`` the DER
    SubjectPublicKeyInfo. The mask must fit the key: RSA (>= 2048 bits) for RS*/PS*,
    a P-256 key for ES256 only, P-384 for ES384 only, Ed25519/Ed448 for EdDSA only;
    anything else is a ValueError. One verification context per algorithm is set up
    here, once.
    """

    cdef EVP_PKEY* _pkey
    cdef EVP_PKEY_CTX* _ctx[FG_JWT_N_ASYMMETRIC]
    cdef EVP_MD_CTX* _md_ctx
    cdef _RsaPublic _rsa           # RS*: verified by _rsa_pkcs1_verify when n is set
    cdef readonly object kid
    cdef readonly unsigned int algs
    cdef int _kind
    cdef Py_ssize_t _sig_len       # signature size (RSA: the modulus bytes)
    cdef Py_ssize_t _coord         # EC coordinate (and r, s) size
    cdef const unsigned char* _order

    def __cinit__(self, kid, unsigned int algs, bytes spki_der not None):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(spki_der)
        cdef char group[32]
        cdef size_t glen = 0
        cdef int base, bits, i
        cdef unsigned int bit, compatible
        cdef EVP_PKEY_CTX* ctx
        cdef const EVP_MD* md

        if kid is not None and not isinstance(kid, str):
            raise TypeError("kid must be a str or None")
        self.kid = kid
        self._pkey = d2i_PUBKEY(NULL, &p, PyBytes_GET_SIZE(spki_der))
        if self._pkey == NULL or p != (<const unsigned char*>PyBytes_AS_STRING(spki_der)
                                       + PyBytes_GET_SIZE(spki_der)):
            ERR_clear_error()
            raise ValueError("not a DER SubjectPublicKeyInfo public key")
        base = EVP_PKEY_get_base_id(self._pkey)
        bits = EVP_PKEY_get_bits(self._pkey)
        if base == EVP_PKEY_RSA:
            if not _MIN_RSA_BITS <= bits <= _MAX_RSA_BITS:
                raise ValueError(f"RSA key of {bits} bits (2048 to 16384 are accepted)")
            self._kind = _K_RSA
            self._sig_len = EVP_PKEY_get_size(self._pkey)
            compatible = _RSA_ALGS
        elif base == EVP_PKEY_EC:
            if EVP_PKEY_get_group_name(self._pkey, group, sizeof(group), &glen) != 1:
                ERR_clear_error()
                raise ValueError("EC key without a named curve")
            name = group[:glen].decode("ascii", "replace")
            if name in ("prime256v1", "P-256", "secp256r1"):
                self._kind = _K_P256
                self._coord = 32
                self._order = _P256_ORDER
                compatible = FG_JWT_ES256
            elif name in ("secp384r1", "P-384"):
                self._kind = _K_P384
                self._coord = 48
                self._order = _P384_ORDER
                compatible = FG_JWT_ES384
            else:
                raise ValueError(f"EC curve {name} is not supported (P-256, P-384)")
            self._sig_len = 2 * self._coord
        elif base == EVP_PKEY_ED25519:
            self._kind = _K_ED25519
            self._sig_len = 64
            compatible = FG_JWT_EDDSA
        elif base == EVP_PKEY_ED448:
            self._kind = _K_ED448
            self._sig_len = 114
            compatible = FG_JWT_EDDSA
        else:
            raise ValueError("unsupported public key type")
        if algs == 0 or algs & ~compatible:
            bad = ", ".join(jwt_alg_names(algs & ~compatible)) or "nothing"
            raise ValueError(f"key cannot verify {bad}")
        self.algs = algs
        if self._kind >= _K_ED25519:
            self._md_ctx = EVP_MD_CTX_new()
            if self._md_ctx == NULL:
                raise MemoryError()
            return
        for i in range(FG_JWT_N_ASYMMETRIC):
            bit = (<unsigned int>1) << i
            if not algs & bit:
                continue
            md = _digest_of(bit)
            ctx = EVP_PKEY_CTX_new(self._pkey, NULL)
            if ctx == NULL:
                raise MemoryError()
            self._ctx[i] = ctx
            if (EVP_PKEY_verify_init(ctx) != 1
                    or EVP_PKEY_CTX_set_signature_md(ctx, md) != 1):
                ERR_clear_error()
                raise ValueError("libcrypto refused the key")
            if bit & _RSA_ALGS:
                if bit & _PSS_ALGS:
                    # RFC 7518 §3.5: MGF1 with the same hash. The RFC's signers use a
                    # salt of hLen; any length verifies (PyJWT signs with the maximum).
                    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) != 1
                            or EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) != 1
                            or EVP_PKEY_CTX_set_rsa_pss_saltlen(
                                ctx, RSA_PSS_SALTLEN_AUTO) != 1):
                        ERR_clear_error()
                        raise ValueError("libcrypto refused RSA-PSS parameters")
                elif EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1:
                    ERR_clear_error()
                    raise ValueError("libcrypto refused PKCS#1 v1.5 padding")
        if algs & _PKCS1_ALGS:
            _rsa_prepare(&self._rsa, self._pkey, <int>self._sig_len)

    def __dealloc__(self):
        cdef int i
        _rsa_free(&self._rsa)
        for i in range(FG_JWT_N_ASYMMETRIC):
            if self._ctx[i] != NULL:
                EVP_PKEY_CTX_free(self._ctx[i])
                self._ctx[i] = NULL
        if self._md_ctx != NULL:
            EVP_MD_CTX_free(self._md_ctx)
            self._md_ctx = NULL
        if self._pkey != NULL:
            EVP_PKEY_free(self._pkey)
            self._pkey = NULL

    def __repr__(self):
        return f"<JwtKey kid={self.kid!r} algs={'/'.join(jwt_alg_names(self.algs))}>"

    cdef bint _verify(self, unsigned int alg, const unsigned char* msg, Py_ssize_t mlen,
                      const unsigned char* sig, Py_ssize_t slen) noexcept nogil:
        # True only for a valid signature; the caller checked that alg is in self.algs.
        cdef unsigned char digest[EVP_MAX_MD_SIZE]
        cdef unsigned char der[2 * (2 + 1 + _EC_MAX_COORD) + 2]
        cdef unsigned int dlen = 0
        cdef Py_ssize_t n, c
        cdef const unsigned char* s
        cdef int rc

        if self._kind >= _K_ED25519:
            # RFC 8037 §3.1: PureEdDSA over the signing input itself, no pre-hash.
            if slen != self._sig_len:
                return False
            rc = EVP_DigestVerifyInit(self._md_ctx, NULL, NULL, NULL, self._pkey)
            if rc == 1:
                rc = EVP_DigestVerify(self._md_ctx, sig, slen, msg, mlen)
            if rc != 1:
                ERR_clear_error()
            return rc == 1
        if EVP_Digest(msg, mlen, digest, &dlen, _digest_of(alg), NULL) != 1:
            ERR_clear_error()
            return False
        if self._kind == _K_RSA:
            # RFC 8017 §8.2.2 step 1: the signature is exactly as long as the modulus.
            if slen != self._sig_len:
                return False
            if alg & _PKCS1_ALGS and self._rsa.n != NULL:
                return _rsa_pkcs1_verify(&self._rsa, sig, slen, digest, dlen)
            rc = EVP_PKEY_verify(self._ctx[fg_ctz32(alg)], sig, slen, digest, dlen)
        else:
            # RFC 7518 §3.4: R and S as fixed-length big-endian octets, concatenated;
            # a DER ECDSA-Sig-Value is not a JWS signature. r, s in [1, n-1] (SEC 1
            # §4.1.4 step 1).
            c = self._coord
            if slen != 2 * c:
                return False
            s = sig + c
            if (_all_zero(sig, c) or _all_zero(s, c)
                    or memcmp(sig, self._order, c) >= 0
                    or memcmp(s, self._order, c) >= 0):
                return False
            n = _der_integer(sig, c, der + 2)
            n += _der_integer(s, c, der + 2 + n)
            der[0] = 0x30
            der[1] = <unsigned char>n
            rc = EVP_PKEY_verify(self._ctx[fg_ctz32(alg)], der, n + 2, digest, dlen)
        if rc != 1:
            ERR_clear_error()
        return rc == 1

    def verify_signature(self, str alg not None, bytes signing_input not None,
                         bytes signature not None, /):
        """Bare signature check of ``signature`` over ``signing_input`` with ``alg``.

        No JWT parsing: the same libcrypto call that JwtVerifier makes (the floor it is
        benchmarked against). ValueError when the key may not be used with ``alg``.
        """
        bit = _ALG_BITS.get(alg)
        if bit is None or not self.algs & <unsigned int>bit:
            raise ValueError(f"this key does not verify {alg}")
        return self._verify(<unsigned int>bit,
                            <const unsigned char*>PyBytes_AS_STRING(signing_input),
                            PyBytes_GET_SIZE(signing_input),
                            <const unsigned char*>PyBytes_AS_STRING(signature),
                            PyBytes_GET_SIZE(signature))


cdef class JwtKeySet:
    """The keys of one JWKS generation, by ``kid``.

    ``JwtKeySet(keys, generation=0)``. Several keys may share a ``kid`` (one per key
    type); the one usable with the token's ``alg`` is chosen.
    """

    cdef dict _by_kid            # kid -> tuple of JwtKey
    cdef tuple _keys
    cdef readonly unsigned long long generation

    def __cinit__(self, keys=(), unsigned long long generation=0):
        cdef JwtKey key
        self._keys = tuple(keys)
        self._by_kid = {}
        self.generation = generation
        for key in self._keys:
            if key.kid is not None:
                self._by_kid[key.kid] = self._by_kid.get(key.kid, ()) + (key,)

    def __len__(self):
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def __contains__(self, kid):
        return kid in self._by_kid

    def __repr__(self):
        return f"<JwtKeySet generation={self.generation} keys={len(self._keys)}>"

    cdef JwtKey _select(self, object kid, unsigned int alg, int* reason):
        # The key for (kid, alg), or None with reason UNKNOWN_KID / KEY_ALG_MISMATCH.
        cdef JwtKey key, found = None
        cdef PyObject* hit
        cdef int compatible = 0
        if kid is None:
            # No kid: only unambiguous when exactly one key of the set fits alg.
            for key in self._keys:
                if key.algs & alg:
                    compatible += 1
                    found = key
            if compatible == 1:
                return found
            reason[0] = FG_JWT_UNKNOWN_KID
            return None
        hit = PyDict_GetItem(self._by_kid, kid)
        if hit == NULL:
            reason[0] = FG_JWT_UNKNOWN_KID
            return None
        for key in <tuple>hit:
            if key.algs & alg:
                return key
        reason[0] = FG_JWT_KEY_ALG_MISMATCH
        return None


# ---- the verifier --------------------------------------------------------------------

@cython.no_gc
cdef class _Entry:
    # One verified token: what verify()/authenticate() return, and until when. Not
    # tracked by the cycle collector (it can be in no cycle: claims and prepared never
    # refer back to it), and neither are its claims (_untrack), so 16,384 cached tokens
    # do not lengthen every full collection.
    cdef bytes owner             # holds the token at [start, start + n): the bytes the
    cdef Py_ssize_t start        # caller passed (the Authorization value, not a copy);
    cdef Py_ssize_t n            # a cache hit must equal them byte for byte
    cdef object claims           # None with a JwtPrincipals: verify() parses again
    cdef object prepared
    cdef double cache_until      # exp + leeway, or insertion + FG_JWT_CACHE_NO_EXP_TTL
    cdef double nbf_deadline     # nbf - leeway (or -inf)
    cdef double iat_deadline     # iat - leeway (or -inf)


cdef inline object _cache_key(const char* token, Py_ssize_t n):
    # The verified-token cache's key: the token's last 8 bytes (the tail of its
    # signature, base64url) and its length, as an int. Hashing the whole ~600-byte token
    # (siphash, every request: the token is a new bytes object each time) was the
    # largest single cost of a cache hit; the entry keeps the whole token and a hit is
    # compared in full (_same_token), so a shared tail can only cost a full verify.
    cdef uint64_t tail = 0
    memcpy(&tail, token + (n - 8 if n >= 8 else 0), 8 if n >= 8 else n)
    return PyLong_FromUnsignedLongLong((tail ^ (<uint64_t>n << 56)) & 0x1FFFFFFFFFFFFFFFULL)


cdef inline bint _same_token(bytes cached, const char* token, Py_ssize_t n) noexcept:
    return (PyBytes_GET_SIZE(cached) == n
            and memcmp(PyBytes_AS_STRING(cached), token, n) == 0)


cdef inline bint _entry_is(_Entry entry, const char* token, Py_ssize_t n) noexcept:
    return (entry.n == n
            and memcmp(PyBytes_AS_STRING(entry.owner) + entry.start, token, n) == 0)


cdef object _MISSING = object()
cdef double _MAX_NUMERIC_DATE = 253402300799.0  # 9999-12-31T23:59:59Z
cdef object _MAX_NUMERIC_DATE_INT = 253402300799


cdef int _numeric_date(object value, double* out) noexcept:
    # RFC 7519 §2 NumericDate: a JSON number. bool is not one (it subclasses int), nor
    # a string; NaN/inf cannot come out of orjson; absurd values are refused by range.
    cdef double d
    if PyFloat_CheckExact(value):
        d = PyFloat_AS_DOUBLE(value)
    elif PyLong_CheckExact(value):
        if value < 0 or value > _MAX_NUMERIC_DATE_INT:
            return -1
        d = <double><long long>value
    else:
        return -1
    if not (0.0 <= d <= _MAX_NUMERIC_DATE):  # NaN fails this too
        return -1
    out[0] = d
    return 0


# ---- the claims FluxGate reads, and nothing else -------------------------------------
#
# A token carries claims the gateway never reads (jti, tenant, roles, email, ...): an
# identity provider's token is mostly those. The payload is scanned once in C, every value
# checked to be JSON that orjson accepts, without building anything; only the members the
# verifier and its ``prepare`` read are built (_json_built), in order, so a member named
# twice keeps its last value as in orjson. The scanner never refuses a payload: whatever
# it cannot vouch for (an escape in a member name, a surrogate escape, a number that might
# not fit a double, nesting deeper than _JSON_MAX_DEPTH, anything not well-formed) is
# parsed in full by orjson as before, so every payload is accepted or refused exactly as
# orjson decides.

cdef enum:
    _JSON_MAX_DEPTH = 64          # deeper: orjson decides (its own limit is 1024)
    _JSON_MAX_MAGNITUDE = 300     # digits + exponent beyond this: orjson decides (inf?)
    _JSON_MAX_SELECTED = 64       # selected members of one payload; more: orjson decides
    _JSON_MAX_INT_DIGITS = 18     # an integer this short fits int64 (orjson: an int)


cdef struct _Member:
    # A selected member of the payload: which name, and its value's bytes [start, end).
    Py_ssize_t name
    Py_ssize_t start
    Py_ssize_t end


cdef unsigned char _JSON_PLAIN[256]  # 1: a string byte that needs no further look


cdef int _init_json_tables() except -1:
    cdef int c
    for c in range(256):
        _JSON_PLAIN[c] = 0x20 <= c < 0x80 and c != 0x22 and c != 0x5C
    return 0


_init_json_tables()

# RFC 8259 §7: the escapes after a backslash, other than \uXXXX.
cdef const unsigned char* _JSON_ESCAPES = <const unsigned char*>b'"\\/bfnrt'


cdef inline Py_ssize_t _json_ws(const unsigned char* p, Py_ssize_t i,
                                Py_ssize_t n) noexcept nogil:
    # RFC 8259 §2: insignificant whitespace is space, tab, LF and CR only.
    while i < n and (p[i] == 0x20 or p[i] == 0x0A or p[i] == 0x0D or p[i] == 0x09):
        i += 1
    return i


cdef inline int _hex_digit(unsigned char c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef inline Py_ssize_t _utf8_len(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Length of the well-formed UTF-8 sequence at p (Unicode §3.9 table 3-7: no overlong
    # form, no surrogate, nothing past U+10FFFF), or 0.
    cdef unsigned char c = p[0], lo = 0x80, hi = 0xBF
    cdef Py_ssize_t k, i
    if 0xC2 <= c <= 0xDF:
        k = 2
    elif 0xE0 <= c <= 0xEF:
        k = 3
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif 0xF0 <= c <= 0xF4:
        k = 4
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return 0
    if k > n or not lo <= p[1] <= hi:
        return 0
    for i in range(2, k):
        if not 0x80 <= p[i] <= 0xBF:
            return 0
    return k


cdef inline uint64_t _swar_special(uint64_t w) noexcept nogil:
    # The bytes of w that need a look (not _JSON_PLAIN): '"', '\\', a control (< 0x20)
    # or a byte >= 0x80, each flagged by its top bit (0: none). The zero-byte test of "Bit
    # Twiddling Hacks" on w ^ '"' and w ^ '\\', and its "less than" form for controls: a
    # borrow can flag a byte above a flagged one, never below, so the lowest flag is exact.
    cdef uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL
    cdef uint64_t q = w ^ (ones * 0x22), b = w ^ (ones * 0x5C)
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w) | w) & highs


cdef Py_ssize_t _json_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                             bint* escaped) noexcept nogil:
    # p[i] is '"': the index just past the string (RFC 8259 §7), or -1. Sets *escaped
    # when the string holds a backslash.
    cdef unsigned char c
    cdef Py_ssize_t k
    cdef int a, b, cc, d
    cdef uint64_t w
    i += 1
    while i < n:
        # Eight plain bytes at a time (most of a payload is string bytes: ids, emails,
        # role names), then straight to the first byte that needs a look.
        while i + 8 <= n:
            memcpy(&w, p + i, 8)
            w = _swar_special(w)
            if w:
                i += fg_first_flagged_byte(w)
                break
            i += 8
        if i >= n:
            break
        if _JSON_PLAIN[p[i]]:
            i += 1
            continue
        c = p[i]
        if c == 0x22:
            return i + 1
        if c == 0x5C:
            escaped[0] = True
            if i + 1 >= n:
                return -1
            c = p[i + 1]
            if c == 0x75:  # \uXXXX, not a surrogate (orjson's pairing rules decide those)
                if i + 6 > n:
                    return -1
                a = _hex_digit(p[i + 2])
                b = _hex_digit(p[i + 3])
                cc = _hex_digit(p[i + 4])
                d = _hex_digit(p[i + 5])
                if a < 0 or b < 0 or cc < 0 or d < 0 or (a == 0xD and b >= 8):
                    return -1
                i += 6
            elif memchr(_JSON_ESCAPES, c, 8) != NULL:
                i += 2
            else:
                return -1
        elif c < 0x80:  # a control character
            return -1
        else:
            k = _utf8_len(p + i, n - i)
            if k == 0:
                return -1
            i += k
    return -1


cdef Py_ssize_t _json_number(const unsigned char* p, Py_ssize_t i,
                             Py_ssize_t n) noexcept nogil:
    # RFC 8259 §6: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, and small enough that
    # orjson's double cannot overflow (it refuses 1e400); the index past it, or -1.
    cdef Py_ssize_t digits = 0, start
    cdef long exponent = 0
    cdef bint negative = False
    if i < n and p[i] == 0x2D:
        i += 1
    if i >= n:
        return -1
    if p[i] == 0x30:
        i += 1
        digits = 1
    elif 0x31 <= p[i] <= 0x39:
        while i < n and 0x30 <= p[i] <= 0x39:
            i += 1
            digits += 1
    else:
        return -1
    if i < n and p[i] == 0x2E:
        i += 1
        start = i
        while i < n and 0x30 <= p[i] <= 0x39:
            i += 1
        if i == start:
            return -1
    if i < n and (p[i] == 0x65 or p[i] == 0x45):
        i += 1
        if i < n and (p[i] == 0x2B or p[i] == 0x2D):
            negative = p[i] == 0x2D
            i += 1
        start = i
        while i < n and 0x30 <= p[i] <= 0x39:
            if exponent < 100000:
                exponent = exponent * 10 + (p[i] - 0x30)
            i += 1
        if i == start:
            return -1
        if negative and exponent > _JSON_MAX_MAGNITUDE:
            return -1
    if digits + (0 if negative else exponent) > _JSON_MAX_MAGNITUDE:
        return -1
    return i


cdef Py_ssize_t _json_value(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                            int depth) noexcept nogil:
    # The index just past the JSON value at p[i] (RFC 8259 §3), or -1.
    cdef unsigned char c, close
    cdef bint escaped = False
    if i >= n:
        return -1
    c = p[i]
    if c == 0x22:
        return _json_string(p, i, n, &escaped)
    if c == 0x7B or c == 0x5B:  # { or [
        if depth >= _JSON_MAX_DEPTH:
            return -1
        close = c + 2  # } or ]
        i = _json_ws(p, i + 1, n)
        if i < n and p[i] == close:
            return i + 1
        while True:
            if c == 0x7B:
                if i >= n or p[i] != 0x22:
                    return -1
                i = _json_string(p, i, n, &escaped)
                if i < 0:
                    return -1
                i = _json_ws(p, i, n)
                if i >= n or p[i] != 0x3A:
                    return -1
                i = _json_ws(p, i + 1, n)
            i = _json_value(p, i, n, depth + 1)
            if i < 0:
                return -1
            i = _json_ws(p, i, n)
            if i >= n:
                return -1
            if p[i] == close:
                return i + 1
            if p[i] != 0x2C:
                return -1
            i = _json_ws(p, i + 1, n)
    if c == 0x74:
        return i + 4 if i + 4 <= n and memcmp(p + i, b"true", 4) == 0 else -1
    if c == 0x66:
        return i + 5 if i + 5 <= n and memcmp(p + i, b"false", 5) == 0 else -1
    if c == 0x6E:
        return i + 4 if i + 4 <= n and memcmp(p + i, b"null", 4) == 0 else -1
    return _json_number(p, i, n)


cdef Py_ssize_t _select_members(const unsigned char* p, Py_ssize_t n, _Member* out,
                                const char** names, const Py_ssize_t* lens,
                                Py_ssize_t count) noexcept nogil:
    # The members of the JSON object p[0:n] named in names[0:count], in order, into out
    # (room for _JSON_MAX_SELECTED): how many, or -1 when p[0:n] is not something this
    # scanner vouches for (see above; the caller parses it in full).
    cdef Py_ssize_t i, key, key_end, value, o = 0, j
    cdef bint escaped
    i = _json_ws(p, 0, n)
    if i >= n or p[i] != 0x7B:
        return -1
    i = _json_ws(p, i + 1, n)
    if i < n and p[i] == 0x7D:
        i = _json_ws(p, i + 1, n)
    else:
        while True:
            if i >= n or p[i] != 0x22:
                return -1
            key = i
            escaped = False
            key_end = _json_string(p, i, n, &escaped)
            if key_end < 0 or escaped:  # an escaped name: only orjson decodes it
                return -1
            i = _json_ws(p, key_end, n)
            if i >= n or p[i] != 0x3A:
                return -1
            value = _json_ws(p, i + 1, n)
            i = _json_value(p, value, n, 1)
            if i < 0:
                return -1
            for j in range(count):
                if (lens[j] == key_end - key - 2
                        and (lens[j] == 0 or p[key + 1] == <unsigned char>names[j][0])
                        and memcmp(p + key + 1, names[j], lens[j]) == 0):
                    if o == _JSON_MAX_SELECTED:
                        return -1
                    out[o].name = j
                    out[o].start = value
                    out[o].end = i
                    o += 1
                    break
            i = _json_ws(p, i, n)
            if i >= n:
                return -1
            if p[i] == 0x7D:
                i = _json_ws(p, i + 1, n)
                break
            if p[i] != 0x2C:
                return -1
            i = _json_ws(p, i + 1, n)
    if i != n:
        return -1
    return o


cdef object _json_built(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    # The value p[start:end], which _json_value accepted, as orjson builds it: strings
    # without escapes, integers of up to 18 digits, literals and arrays of those here;
    # anything else by orjson itself. Outside the cycle collector either way (_untrack).
    cdef unsigned char c = p[start]
    cdef Py_ssize_t i, j
    cdef long long v = 0
    cdef bint negative
    cdef list items
    if c == 0x22:
        if memchr(p + start + 1, 0x5C, end - start - 2) == NULL:
            return PyUnicode_DecodeUTF8(<const char*>p + start + 1, end - start - 2, NULL)
    elif c == 0x74:
        return True
    elif c == 0x66:
        return False
    elif c == 0x6E:
        return None
    elif c == 0x5B:
        items = []
        PyObject_GC_UnTrack(<void*>items)
        i = _json_ws(p, start + 1, end)
        if p[i] == 0x5D:
            return items
        while True:
            j = _json_value(p, i, end, 1)
            if j < 0:  # not after the scan: for orjson all the same
                break
            items.append(_json_built(p, i, j))
            i = _json_ws(p, j, end)
            if p[i] == 0x5D:
                return items
            i = _json_ws(p, i + 1, end)  # past the ','
    elif c != 0x7B:
        negative = c == 0x2D
        i = start + negative
        if end - i <= _JSON_MAX_INT_DIGITS:
            while i < end and 0x30 <= p[i] <= 0x39:
                v = v * 10 + (p[i] - 0x30)
                i += 1
            if i == end:
                return PyLong_FromLongLong(-v if negative else v)
    value = _json_loads(PyBytes_FromStringAndSize(<const char*>p + start, end - start))
    _untrack(value)
    return value


cdef void _untrack(object value) noexcept:
    # A parsed claims tree (dicts and lists of scalars, in no cycle, as orjson builds it)
    # taken out of the cycle collector: a cached token's claims then cost a full
    # collection nothing, however many tokens are cached. They could only join a cycle
    # if mutated, which verify()'s callers must not do (the dict is shared with the cache).
    if type(value) is dict:
        PyObject_GC_UnTrack(<void*>value)
        for item in (<dict>value).values():
            if type(item) is dict or type(item) is list:
                _untrack(item)
    elif type(value) is list:
        PyObject_GC_UnTrack(<void*>value)
        for item in <list>value:
            if type(item) is dict or type(item) is list:
                _untrack(item)


cdef dict _json_object(const unsigned char* p, Py_ssize_t n):
    # The JSON object p[0:n], or None when it is not one.
    try:
        value = _json_loads(PyBytes_FromStringAndSize(<const char*>p, n))
    except _JSONDecodeError:
        return None
    return value if type(value) is dict else None


def gc_untrack(obj, /):
    """``obj``, taken out of the cycle collector (``gc.is_tracked(obj)`` is then False).

    Only for an object in no reference cycle, now or later (a cycle through it would never
    be collected): a verified token's principal, which ``prepare`` builds for each caller
    and the cache keeps with each of up to 16,384 tokens, for every full collection to walk
    otherwise. Objects the collector does not track are returned as they are.
    """
    if PyObject_IS_GC(obj):
        PyObject_GC_UnTrack(<void*>obj)
    return obj


cdef inline bint _key_part(object value) noexcept:
    # May this claim be part of a principal's key? Strings, arrays of strings (as tuples)
    # and absent claims only: 1, 1.0 and true are equal in Python but become different
    # scopes and header values.
    if value is None or type(value) is str:
        return True
    if type(value) is not tuple:
        return False
    for item in <tuple>value:
        if type(item) is not str:
            return False
    return True


cdef class JwtPrincipals:
    """The ``prepare`` of a jwt route: the Principal of a verified token's claims.

    ``JwtPrincipals(forward, scopes_of, header_value, limit=4096)``: ``forward`` the
    forward_claims as ((claim, header name bytes), ...); ``scopes_of(claims)`` the
    frozenset of scopes a token holds (it may raise TokenError); ``header_value(value)``
    a forwarded claim as a header value, or None to leave it out.

    Many tokens name the same caller (refreshed tokens, one token per service instance):
    their principal is built once and shared, keyed by every claim it is made of (iss,
    sub, scope, scp, the forwarded claims). Many more callers hold the same scopes: each
    set, and its X-FluxGate-Scopes value, is built once for all of them. Each table is
    emptied when it holds ``limit`` entries. ``JwtVerifier`` calls it at C level.
    """

    cdef tuple _forward
    cdef object _scopes_of
    cdef object _header_value
    cdef dict _principals
    cdef dict _scope_sets
    cdef Py_ssize_t _limit

    def __init__(self, forward, scopes_of, header_value, Py_ssize_t limit=4096):
        self._forward = tuple((<str?>claim, <bytes?>header) for claim, header in forward)
        self._scopes_of = scopes_of
        self._header_value = header_value
        self._principals = {}
        self._scope_sets = {}
        self._limit = max(limit, 1)

    def __call__(self, dict claims not None, /):
        return self.build(claims)

    cdef object build(self, dict claims):
        # Once per newly verified token; the result is cached with it.
        cdef tuple key, found
        cdef Py_ssize_t i, nf = len(self._forward)
        scope = claims.get("scope")
        scp = claims.get("scp")
        if type(scp) is list:
            scp = tuple(<list>scp)
        key = (claims.get("iss"), claims.get("sub"), scope, scp)
        if nf:
            forwarded = []
            for i in range(nf):
                value = claims.get((<tuple>self._forward[i])[0])
                forwarded.append(tuple(<list>value) if type(value) is list else value)
            key += tuple(forwarded)
        for value in key:
            if not _key_part(value):
                scopes = self._scopes_of(claims)
                return self._make(claims, scopes, _scopes_value(scopes))
        # Strings and tuples of them: in no cycle. Untracked, a new caller's key adds
        # nothing for the young collections to count and walk.
        PyObject_GC_UnTrack(<void*>key)
        principal = self._principals.get(key)
        if principal is not None:
            return principal
        # The scope set's key: the scope string alone when there is no scp (a str and a
        # tuple are never equal), the pair otherwise.
        scope_key = scope if scp is None else (scope, scp)
        found = self._scope_sets.get(scope_key)
        if found is None:
            scopes = self._scopes_of(claims)
            found = (scopes, _scopes_value(scopes))
            if len(self._scope_sets) >= self._limit:
                self._scope_sets.clear()
            self._scope_sets[scope_key] = found
        principal = self._make(claims, found[0], <bytes>found[1])
        if len(self._principals) >= self._limit:
            self._principals.clear()
        self._principals[key] = principal
        return principal

    cdef Principal _make(self, dict claims, object scopes, bytes scopes_value):
        cdef list headers
        subject = claims.get("sub") or ""  # a string when present (_check_claims)
        if not self._forward:
            return _jwt_principal(claims.get("iss") or "", subject, scopes, scopes_value, ())
        headers = []
        for claim, header in self._forward:
            if claim in claims:
                value = self._header_value(claims[claim])
                if value is not None:
                    headers.append((header, value))
        return _jwt_principal(claims.get("iss") or "", subject, scopes, scopes_value,
                              tuple(headers))


# The registered claims the verifier itself checks (RFC 7519 §4.1); always parsed.
cdef tuple _CHECKED_CLAIMS = ("exp", "nbf", "iat", "iss", "aud", "sub")

# Bits of _CHECKED_CLAIMS by position: the claims a verifier with a JwtPrincipals only
# checks (prepare never reads them) and so may judge without building them (_Facts).
cdef enum:
    _LEAN_EXP = 1 << 0
    _LEAN_NBF = 1 << 1
    _LEAN_IAT = 1 << 2
    _LEAN_AUD = 1 << 4
    _LEAN_CLAIMS = _LEAN_EXP | _LEAN_NBF | _LEAN_IAT | _LEAN_AUD
    _AUD_OURS = 1                 # _Facts.aud: a plain string, one of the audiences
    _AUD_OTHER = 2                # a plain string, none of them


cdef struct _Facts:
    # What the scan decided about the checked claims it did not build: for each bit in
    # `has`, the NumericDate (exp, nbf, iat: date[0..2]) or the audience verdict (aud).
    # A claim whose bit is clear is in the claims dict, or absent.
    unsigned int has
    double date[3]
    int aud


cdef bint _plain_date(const unsigned char* p, Py_ssize_t start, Py_ssize_t end,
                      double* out) noexcept nogil:
    # A NumericDate written as a plain integer of at most 15 digits within
    # [0, 253402300799], into *out, as _numeric_date reads the int orjson would build;
    # False for anything else (built and judged as before).
    cdef Py_ssize_t i
    cdef long long v = 0
    if end - start > 15:
        return False
    for i in range(start, end):
        if not 0x30 <= p[i] <= 0x39:
            return False
        v = v * 10 + (p[i] - 0x30)
    if end == start or v > 253402300799LL:
        return False
    out[0] = <double>v
    return True


cdef class JwtVerifier:
    """Verifies JWTs for one jwt middleware configuration.

    ``JwtVerifier(*, algorithms, issuer=None, audiences=None, leeway=60.0,
    require_exp=True, max_token_bytes=8192, cache_size=16384, secret=None,
    prepare=None, claims=None)``

    * ``algorithms``: the allowlist (JWS names); HS* only with ``secret`` (bytes).
    * ``audiences``: accepted ``aud`` values, or None to leave ``aud`` unchecked.
    * ``prepare(claims)``: run once per newly verified token; ``authenticate``
      returns (and caches) its result, e.g. the request's Principal. It may raise
      TokenError.
    * ``claims``: the names of the claims ``prepare`` reads, besides exp, nbf, iat,
      iss, aud and sub (always read): the claims dict then holds only these, and the
      others are checked to be JSON but never built. None: every claim.

    ``verify(token, now)`` returns the claims dict (shared with the cache, and outside
    the cycle collector: do not mutate it; with a ``JwtPrincipals`` as ``prepare`` the
    cache keeps only the principal, and each call parses the claims again) or raises
    TokenError. ``set_keys(keyset)`` installs a new JWKS generation and empties the cache.
    Single-threaded: one verifier per worker, like everything else on the hot path.
    """

    cdef unsigned int _algs
    cdef object _issuer
    cdef bytes _issuer_utf8
    cdef frozenset _audiences
    cdef double _leeway
    cdef bint _require_exp
    cdef Py_ssize_t _max_bytes
    cdef EVP_MAC_CTX* _hmac[3]       # HS256, HS384, HS512: keyed once, re-initialized per token
    cdef JwtKeySet _keys
    cdef object _prepare
    # The claim names parsed (None: all), as str, and UTF-8 for the scanner: _names[i]
    # points into _names_utf8[i].
    cdef tuple _selected
    cdef tuple _names_utf8
    cdef unsigned int _lean          # _LEAN_* claims judged in the scan, never built
    cdef tuple _audiences_utf8
    cdef const char** _names
    cdef Py_ssize_t* _name_lens
    cdef dict _young
    cdef dict _old
    cdef dict _dropped       # the generation before _old, freed a few entries at a time
    cdef Py_ssize_t _half
    cdef unsigned char* _scratch
    # The last verified token's header part (base64url, as sent) and what it decided:
    # an IdP signs every token with the same few header bytes, and the same bytes
    # decide the same alg and key for as long as the key set stays (flush() clears it).
    cdef bytes _known_header
    cdef JwtKey _known_key
    cdef unsigned int _known_alg

    def __cinit__(self, *, algorithms, issuer=None, audiences=None, double leeway=60.0,
                  bint require_exp=True, Py_ssize_t max_token_bytes=FG_JWT_MAX_TOKEN,
                  Py_ssize_t cache_size=FG_JWT_CACHE_SIZE, bytes secret=None,
                  prepare=None, claims=None):
        cdef Py_ssize_t i
        self._algs = jwt_alg_mask(algorithms)
        if self._algs == 0:
            raise ValueError("algorithms must not be empty")
        if self._algs & FG_JWT_HMAC_ALGS and not secret:
            raise ValueError("HS* algorithms need a shared secret")
        if secret is not None and not self._algs & FG_JWT_HMAC_ALGS:
            raise ValueError("a shared secret is only used with HS* algorithms")
        if issuer is not None and not isinstance(issuer, str):
            raise TypeError("issuer must be a str or None")
        if not 64 <= max_token_bytes <= FG_JWT_MAX_TOKEN_CEILING:
            raise ValueError(f"max_token_bytes must be 64..{FG_JWT_MAX_TOKEN_CEILING}")
        if cache_size < 0 or not leeway >= 0.0:
            raise ValueError("cache_size and leeway must not be negative")
        self._issuer = issuer
        if issuer is not None:
            utf8 = (<str>issuer).encode("utf-8", "surrogatepass")
            # Bytes a JSON string can only hold escaped: the raw bytes would not say it.
            if b"\\" not in utf8 and b'"' not in utf8:
                self._issuer_utf8 = utf8
        self._audiences = None if audiences is None else frozenset(audiences)
        if self._audiences is not None:
            if not all(isinstance(a, str) for a in self._audiences):
                raise TypeError("audiences must be strings")
        self._leeway = leeway
        self._require_exp = require_exp
        self._max_bytes = max_token_bytes
        for i in range(3):
            if self._algs & (FG_JWT_HS256 << i):
                self._hmac[i] = _keyed_hmac(secret, _digest_of(FG_JWT_HS256 << i))
        self._prepare = prepare
        if claims is not None:
            if isinstance(claims, str):
                raise TypeError("claims must be an iterable of claim names")
            claims = tuple(claims)
            if not all(isinstance(c, str) for c in claims):
                raise TypeError("claims must be an iterable of claim names")
            self._selected = tuple(dict.fromkeys((*_CHECKED_CLAIMS, *claims)))
            self._names_utf8 = tuple(c.encode("utf-8", "surrogatepass")
                                     for c in self._selected)
            self._names = <const char**>PyMem_Malloc(
                len(self._selected) * sizeof(const char*))
            self._name_lens = <Py_ssize_t*>PyMem_Malloc(
                len(self._selected) * sizeof(Py_ssize_t))
            if self._names == NULL or self._name_lens == NULL:
                raise MemoryError()
            for i in range(len(self._selected)):
                self._names[i] = PyBytes_AS_STRING(<bytes>self._names_utf8[i])
                self._name_lens[i] = PyBytes_GET_SIZE(<bytes>self._names_utf8[i])
            if type(prepare) is JwtPrincipals:
                # Its claims dict is only read by JwtPrincipals.build (verify() parses the
                # claims again): a checked claim it does not read need not be in it.
                for i in range(len(_CHECKED_CLAIMS)):
                    if _CHECKED_CLAIMS[i] not in claims:
                        self._lean |= (1u << i) & _LEAN_CLAIMS
        if self._audiences is not None:
            self._audiences_utf8 = tuple(a.encode("utf-8", "surrogatepass")
                                         for a in self._audiences)
        self._young = {}
        self._old = {}
        self._dropped = {}
        self._half = (cache_size + 1) // 2
        self._keys = None
        self._scratch = <unsigned char*>PyMem_Malloc(max_token_bytes)
        if self._scratch == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        for i in range(3):
            EVP_MAC_CTX_free(self._hmac[i])  # cleanses the key
            self._hmac[i] = NULL
        PyMem_Free(self._scratch)
        PyMem_Free(self._names)
        PyMem_Free(self._name_lens)
        self._scratch = NULL
        self._names = NULL
        self._name_lens = NULL

    def __repr__(self):
        # Never the secret.
        return (f"<JwtVerifier algorithms={'/'.join(jwt_alg_names(self._algs))} "
                f"issuer={self._issuer!r} keys={self._keys!r}>")

    @property
    def keys(self):
        """The installed JwtKeySet (None before the first one)."""
        return self._keys

    @property
    def algorithms(self):
        return jwt_alg_names(self._algs)

    @property
    def claims(self):
        """The claim names parsed out of a token, or None for every claim."""
        return self._selected

    @property
    def cached(self):
        """Number of tokens in the verified-token cache."""
        return len(self._young) + len(self._old)

    def set_keys(self, JwtKeySet keys):
        """Install a key set (a new JWKS generation); flushes the token cache."""
        self._keys = keys
        self.flush()

    def flush(self):
        """Forget every cached verification."""
        self._young = {}
        self._old = {}
        self._dropped = {}
        self._known_header = None
        self._known_key = None

    def verify(self, bytes token not None, double now):
        """The claims of a valid token, or TokenError(reason)."""
        cdef _Entry entry = self._entry(token, now)
        if entry.claims is not None:
            return entry.claims
        return self._claims_again(token)

    def authenticate(self, bytes token not None, double now):
        """``prepare(claims)`` of a valid token (cached with it), or TokenError."""
        return self._entry(token, now).prepared

    def authenticate_bearer(self, list headers not None, double now):
        """``authenticate()`` of the request's ``Authorization: Bearer`` token, read in
        place from ``headers`` (the request's (name, value) pairs; see bearer_token): a
        cache hit copies nothing. None when there is no bearer token (no Authorization
        header, or another scheme); TokenError ``ambiguous_credentials`` for several
        Authorization headers, ``malformed`` for a bare "Bearer"."""
        return self._bearer_principal(headers, now)

    # -- internals ---------------------------------------------------------------

    cdef object _bearer_principal(self, list headers, double now):
        # authenticate_bearer, for JwtStep too (a C call, no argument tuple).
        cdef Py_ssize_t start = 0, end = 0
        value = _bearer_span(headers, &start, &end)
        if value is None:
            return None
        if value is False:
            raise TokenError("ambiguous_credentials")
        if start == end:
            raise TokenError("malformed")
        return self._entry_of(<bytes>value, start, end - start, now).prepared

    cdef _Entry _entry(self, bytes token, double now):
        return self._entry_of(token, 0, PyBytes_GET_SIZE(token), now)

    cdef _Entry _entry_of(self, bytes owner, Py_ssize_t start, Py_ssize_t n, double now):
        # The cached or newly verified entry of the token owner[start:start + n]. The
        # entry keeps a reference to owner rather than a copy of the token: neither a
        # hit nor a miss copies it.
        cdef const char* p = PyBytes_AS_STRING(owner) + start
        key = _cache_key(p, n)
        cdef _Entry entry = self._cached(key, p, n, now)
        if entry is not None:
            return entry
        # raises TokenError: nothing is cached
        entry = self._verify_full(<const unsigned char*>p, n, now)
        if self._half:
            entry.owner = owner
            entry.start = start
            entry.n = n
            self._remember(key, entry)
        return entry

    cdef _Entry _cached(self, object key, const char* token, Py_ssize_t n, double now):
        # The cached entry of this exact token, with its time checks re-done (raising
        # TokenError), or None. PyDict_GetItem lends its result: `entry` takes a reference
        # of its own before anything (_remember dropping the old dict) could free it.
        cdef PyObject* hit = PyDict_GetItem(self._young, key)
        cdef _Entry entry = None
        if hit != NULL:
            entry = <_Entry>hit
        elif self._half:
            hit = PyDict_GetItem(self._old, key)
            if hit != NULL:
                entry = <_Entry>hit
                if _entry_is(entry, token, n):
                    self._remember(key, entry)  # still in use: keep it young
        if entry is None or not _entry_is(entry, token, n):
            # A miss, or another token with the same tail (never a valid one in practice:
            # the tail is signature bytes): the caller verifies it in full, and only a
            # valid token replaces the entry.
            return None
        if now < entry.cache_until:
            if now < entry.nbf_deadline:
                raise TokenError(_JWT_REASONS[FG_JWT_NOT_YET_VALID])
            if now < entry.iat_deadline:
                raise TokenError(_JWT_REASONS[FG_JWT_ISSUED_IN_FUTURE])
            return entry
        # Past exp (or the no-exp TTL): never served from the cache again.
        self._young.pop(key, None)
        self._old.pop(key, None)
        return None

    cdef void _remember(self, object key, _Entry entry):
        # Two generations: when the young dict is full it becomes the old one and the
        # old one is dropped, so at most cache_size tokens stay, the recently used. The
        # dropped one is freed two entries per insertion (popitem takes the last, in
        # constant time), gone well before the next turn: freeing half a cache at once
        # (8,192 entries, their claims and principals) held up every request of the worker
        # for milliseconds, each time.
        if len(self._young) >= self._half:
            self._dropped = self._old
            self._old = self._young
            self._young = {}
        self._young[key] = entry
        if self._dropped:
            self._dropped.popitem()
            if self._dropped:
                self._dropped.popitem()

    cdef dict _claims_again(self, bytes token):
        # The claims of a token verified already (its entry keeps no claims dict): the
        # same members, parsed the same way, as a new dict.
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(token)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(token)
        cdef const unsigned char* dot1 = <const unsigned char*>memchr(p, b".", n)
        cdef const unsigned char* dot2 = <const unsigned char*>memchr(
            dot1 + 1, b".", n - (dot1 + 1 - p))
        return self._claims_of(dot1 + 1, dot2 - dot1 - 1, NULL)

    cdef dict _json_part(self, const unsigned char* src, Py_ssize_t n):
        # A JSON object from one base64url part, or None when it is not one. Typed as a
        # dict, so the claim lookups that follow are PyDict calls, not method calls.
        cdef Py_ssize_t m = b64url_decode_into(src, n, self._scratch)
        if m < 0:
            return None
        return _json_object(self._scratch, m)

    cdef dict _claims_of(self, const unsigned char* src, Py_ssize_t n, _Facts* facts):
        # The claims of the payload part src[0:n] (base64url), as _json_part, but only
        # the _selected ones when the verifier has a selection; taken out of the cycle
        # collector (_untrack) either way. With facts, the _lean claims that are plain
        # (an integer date, an audience string without escapes) are judged into it
        # instead of being built (an aud not checked at all is not built either).
        cdef Py_ssize_t m = b64url_decode_into(src, n, self._scratch)
        cdef Py_ssize_t k, i, which
        cdef unsigned int bit, built = 0
        cdef _Member members[_JSON_MAX_SELECTED]
        cdef dict claims
        if m < 0:
            return None
        if self._selected is None:
            claims = _json_object(self._scratch, m)
        else:
            k = _select_members(self._scratch, m, members, self._names, self._name_lens,
                                len(self._selected))
            if k >= 0:
                claims = _PyDict_NewPresized(k)
                for i in range(k):
                    which = members[i].name
                    bit = (1u << which) & self._lean if facts != NULL and which < 6 else 0
                    if bit and self._judged(members[i].start, members[i].end, which, facts):
                        # A member named twice keeps its last value (as in orjson).
                        facts.has |= bit
                        if built & bit:
                            claims.pop(<str>self._selected[which], None)
                            built &= ~bit
                        continue
                    if bit:
                        facts.has &= ~bit
                        built |= bit
                    if which == 3 and self._is_issuer(members[i].start, members[i].end):
                        # iss, when it is ours: the configured string itself, equal and
                        # with its hash known (the principal's key hashes it)
                        claims["iss"] = self._issuer
                        continue
                    claims[<str>self._selected[which]] = _json_built(
                        self._scratch, members[i].start, members[i].end)
                # Its values are untracked already (_json_built); a list among them tracked
                # the dict again (CPython's MAINTAIN_TRACKING cannot see they are).
                PyObject_GC_UnTrack(<void*>claims)
                return claims
            claims = _json_object(self._scratch, m)
            if claims is not None:
                claims = {name: claims[name] for name in self._selected if name in claims}
        if claims is not None:
            _untrack(claims)
        return claims

    cdef bint _is_issuer(self, Py_ssize_t start, Py_ssize_t end):
        # Is scratch[start:end] a JSON string spelling the issuer byte for byte? (Then it
        # holds no escape: _issuer_utf8 has no backslash.)
        cdef const unsigned char* p = self._scratch
        if self._issuer_utf8 is None or p[start] != 0x22:
            return False
        return (PyBytes_GET_SIZE(self._issuer_utf8) == end - start - 2
                and memcmp(PyBytes_AS_STRING(self._issuer_utf8), p + start + 1,
                           end - start - 2) == 0)

    cdef bint _judged(self, Py_ssize_t start, Py_ssize_t end, Py_ssize_t name,
                      _Facts* facts):
        # Is the lean checked claim _selected[name], at scratch[start:end], judged into
        # facts (True) rather than built (False)?
        cdef const unsigned char* p = self._scratch
        cdef Py_ssize_t length
        if name < 3:
            return _plain_date(p, start, end, &facts.date[name])
        if self._audiences_utf8 is None:
            return True  # aud is not checked: nothing to build
        if p[start] != 0x22 or memchr(p + start + 1, 0x5C, end - start - 2) != NULL:
            return False
        length = end - start - 2
        facts.aud = _AUD_OTHER
        for aud in self._audiences_utf8:
            if (PyBytes_GET_SIZE(<bytes>aud) == length
                    and memcmp(PyBytes_AS_STRING(<bytes>aud), p + start + 1, length) == 0):
                facts.aud = _AUD_OURS
                break
        return True

    cdef JwtKey _header_key(self, const unsigned char* p, Py_ssize_t hlen,
                            const unsigned char* payload, Py_ssize_t plen, double now,
                            unsigned int* alg):
        # The header's (RFC 7515 §4) alg, into *alg, and the key it names (None for HS*),
        # or TokenError.
        cdef int reason = FG_JWT_OK
        cdef JwtKey key = None
        cdef dict header = self._json_part(p, hlen)
        if header is None:
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])
        name = header.get("alg")
        bit = _ALG_BITS.get(name) if type(name) is str else None
        if bit is None or not self._algs & <unsigned int>bit:
            raise TokenError(_JWT_REASONS[FG_JWT_ALG_NOT_ALLOWED])
        alg[0] = <unsigned int>bit
        if "crit" in header:
            raise TokenError(_JWT_REASONS[FG_JWT_CRIT_UNSUPPORTED])
        if header.get("b64", True) is not True:
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])
        kid = header.get("kid")
        if kid is not None and not _kid_ok(kid):
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])

        # -- key --
        if not alg[0] & FG_JWT_HMAC_ALGS:
            if self._keys is None or len(self._keys) == 0:
                raise TokenError(_JWT_REASONS[FG_JWT_NO_KEYS])
            key = self._keys._select(kid, alg[0], &reason)
            if key is None:
                if reason == FG_JWT_UNKNOWN_KID:
                    # Only a token that would otherwise pass may ask for a refresh.
                    self._check_claims(payload, plen, now, None)
                    raise TokenError(_JWT_REASONS[FG_JWT_UNKNOWN_KID], kid)
                raise TokenError(_JWT_REASONS[reason])
        return key

    cdef _Entry _verify_full(self, const unsigned char* p, Py_ssize_t n, double now):
        cdef const unsigned char* dot1
        cdef const unsigned char* dot2
        cdef Py_ssize_t hlen, plen, slen, m
        cdef unsigned int alg
        cdef int reason = FG_JWT_OK
        cdef JwtKey key = None
        cdef _Entry entry
        cdef unsigned char mac[EVP_MAX_MD_SIZE]
        cdef size_t maclen = 0
        cdef EVP_MAC_CTX* hmac
        cdef bint ok, known

        if n > self._max_bytes:
            raise TokenError(_JWT_REASONS[FG_JWT_TOO_LARGE])
        dot1 = <const unsigned char*>memchr(p, b".", n)
        if dot1 == NULL:
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])
        dot2 = <const unsigned char*>memchr(dot1 + 1, b".", n - (dot1 + 1 - p))
        if dot2 == NULL or memchr(dot2 + 1, b".", n - (dot2 + 1 - p)) != NULL:
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])
        hlen = dot1 - p
        plen = dot2 - dot1 - 1
        slen = n - (dot2 + 1 - p)
        if hlen == 0 or plen == 0:
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])

        # -- header (RFC 7515 §4): the alg, and the key it names --
        if self._known_header is not None and _same_token(self._known_header, <const char*>p,
                                                          hlen):
            alg = self._known_alg
            key = self._known_key
            known = True
        else:
            key = self._header_key(p, hlen, dot1 + 1, plen, now, &alg)
            known = False

        # -- signature over ASCII(header) || '.' || ASCII(payload) (RFC 7515 §5.2) --
        m = b64url_decode_into(dot2 + 1, slen, self._scratch)
        if m <= 0:
            reason = FG_JWT_MALFORMED if m < 0 else FG_JWT_BAD_SIGNATURE
            raise TokenError(_JWT_REASONS[reason])
        if key is not None:
            ok = key._verify(alg, p, dot2 - p, self._scratch, m)
        else:
            # A NULL key re-initializes the context with the key it was given.
            hmac = self._hmac[fg_ctz32(alg) - fg_ctz32(FG_JWT_HS256)]
            ok = (EVP_MAC_init(hmac, NULL, 0, NULL) == 1
                  and EVP_MAC_update(hmac, p, dot2 - p) == 1
                  and EVP_MAC_final(hmac, mac, &maclen, sizeof(mac)) == 1
                  and <size_t>m == maclen
                  and CRYPTO_memcmp(mac, self._scratch, maclen) == 0)
            if not ok:
                ERR_clear_error()
        if not ok:
            raise TokenError(_JWT_REASONS[FG_JWT_BAD_SIGNATURE])
        if not known:
            # Only a header that led to a good signature is remembered, so junk headers
            # cannot evict it.
            self._known_header = PyBytes_FromStringAndSize(<char*>p, hlen)
            self._known_key = key
            self._known_alg = alg

        # -- claims (RFC 7519 §4.1) --
        entry = _Entry.__new__(_Entry)
        claims = self._check_claims(dot1 + 1, plen, now, entry)
        if type(self._prepare) is JwtPrincipals:
            # The jwt middleware's, at C level. The entry keeps the principal only: the
            # claims dict and its values would stay with each of up to cache_size tokens,
            # to be freed cold when it leaves; verify() parses them again (_claims_again).
            entry.prepared = (<JwtPrincipals>self._prepare).build(claims)
            return entry
        entry.claims = claims
        if self._prepare is not None:
            entry.prepared = self._prepare(claims)
        else:
            entry.prepared = entry.claims
        return entry

    cdef dict _check_claims(self, const unsigned char* src, Py_ssize_t n, double now,
                            _Entry entry):
        # The claims dict, or TokenError; fills entry's deadlines when given.
        cdef double exp_deadline = INFINITY, nbf_deadline = -INFINITY
        cdef double iat_deadline = -INFINITY, d = 0.0
        cdef _Facts facts
        facts.has = 0
        cdef dict claims = self._claims_of(src, n, &facts)
        if claims is None:
            raise TokenError(_JWT_REASONS[FG_JWT_MALFORMED])
        if facts.has & _LEAN_EXP:
            exp_deadline = facts.date[0] + self._leeway
        else:
            value = claims.get("exp", _MISSING)
            if value is _MISSING:
                if self._require_exp:
                    raise TokenError(_JWT_REASONS[FG_JWT_MISSING_CLAIM])
            elif _numeric_date(value, &d) < 0:
                raise TokenError(_JWT_REASONS[FG_JWT_INVALID_CLAIM])
            else:
                exp_deadline = d + self._leeway
        if facts.has & _LEAN_NBF:
            nbf_deadline = facts.date[1] - self._leeway
        else:
            value = claims.get("nbf", _MISSING)
            if value is not _MISSING:
                if _numeric_date(value, &d) < 0:
                    raise TokenError(_JWT_REASONS[FG_JWT_INVALID_CLAIM])
                nbf_deadline = d - self._leeway
        if facts.has & _LEAN_IAT:
            iat_deadline = facts.date[2] - self._leeway
        else:
            value = claims.get("iat", _MISSING)
            if value is not _MISSING:
                if _numeric_date(value, &d) < 0:
                    raise TokenError(_JWT_REASONS[FG_JWT_INVALID_CLAIM])
                iat_deadline = d - self._leeway
        value = claims.get("sub", _MISSING)
        if value is not _MISSING and type(value) is not str:
            raise TokenError(_JWT_REASONS[FG_JWT_INVALID_CLAIM])
        if self._issuer is not None:
            value = claims.get("iss")
            if type(value) is not str or value != self._issuer:
                raise TokenError(_JWT_REASONS[FG_JWT_WRONG_ISSUER])
        if self._audiences is not None:
            if facts.has & _LEAN_AUD:
                if facts.aud != _AUD_OURS:
                    raise TokenError(_JWT_REASONS[FG_JWT_WRONG_AUDIENCE])
            else:
                _check_audience(claims.get("aud", _MISSING), self._audiences)
        if now >= exp_deadline:
            raise TokenError(_JWT_REASONS[FG_JWT_EXPIRED])
        if now < nbf_deadline:
            raise TokenError(_JWT_REASONS[FG_JWT_NOT_YET_VALID])
        if now < iat_deadline:
            raise TokenError(_JWT_REASONS[FG_JWT_ISSUED_IN_FUTURE])
        if entry is not None:
            entry.cache_until = (exp_deadline if exp_deadline != INFINITY
                                 else now + FG_JWT_CACHE_NO_EXP_TTL)
            entry.nbf_deadline = nbf_deadline
            entry.iat_deadline = iat_deadline
        return claims


cdef EVP_MAC_CTX* _keyed_hmac(bytes secret, const EVP_MD* md) except NULL:
    # An HMAC context holding secret's key blocks for md, for JwtVerifier's HS* algorithms.
    cdef OSSL_PARAM params[2]
    cdef EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(_HMAC)
    if ctx == NULL:
        raise MemoryError()
    params[0] = OSSL_PARAM_construct_utf8_string(b"digest", <char*>EVP_MD_get0_name(md), 0)
    params[1] = OSSL_PARAM_construct_end()
    if EVP_MAC_init(ctx, <const unsigned char*>PyBytes_AS_STRING(secret),
                    <size_t>PyBytes_GET_SIZE(secret), params) != 1:
        EVP_MAC_CTX_free(ctx)
        ERR_clear_error()
        raise ValueError("libcrypto refused the HMAC key")
    return ctx


cdef bint _kid_ok(object kid):
    # A kid is looked up, never used as a path or URL; still, only short printable ASCII
    # passes, so junk never reaches the refresh channel or a log line.
    if type(kid) is not str:
        return False
    cdef Py_ssize_t n = len(<str>kid)
    if n == 0 or n > FG_JWT_MAX_KID:
        return False
    for ch in <str>kid:
        if not 0x21 <= ord(ch) <= 0x7E:
            return False
    return True


cdef int _check_audience(object aud, frozenset audiences) except -1:
    # RFC 7519 §4.1.3: a StringOrURI or an array of them; one must be ours.
    if type(aud) is str:
        if aud in audiences:
            return 0
    elif type(aud) is list:
        found = False
        for item in <list>aud:
            if type(item) is not str:
                raise TokenError(_JWT_REASONS[FG_JWT_INVALID_CLAIM])
            if item in audiences:
                found = True
        if found:
            return 0
    elif aud is not _MISSING:
        raise TokenError(_JWT_REASONS[FG_JWT_INVALID_CLAIM])
    raise TokenError(_JWT_REASONS[FG_JWT_WRONG_AUDIENCE])


# ---- the bearer credential of a request ----------------------------------------------

cdef object _bearer_span(list headers, Py_ssize_t* start_out, Py_ssize_t* end_out):
    # The value of the ``Authorization: Bearer`` header, with the token's [start, end)
    # in it; None without one (or another scheme), False for several Authorization
    # headers (ambiguous).
    cdef object found = None
    cdef bytes name, value
    cdef const unsigned char* p
    cdef Py_ssize_t n, start, end
    for item in headers:
        name = <bytes?>(<tuple?>item)[0]
        if PyBytes_GET_SIZE(name) != 13 or not _ieq(
                <const unsigned char*>PyBytes_AS_STRING(name), b"authorization", 13):
            continue
        if found is not None:
            return False
        found = (<tuple>item)[1]
    if found is None:
        return None
    value = <bytes?>found
    p = <const unsigned char*>PyBytes_AS_STRING(value)
    n = PyBytes_GET_SIZE(value)
    # RFC 9110 §11.1: the scheme is case-insensitive; one or more SP before the token.
    if n < 6 or not _ieq(p, b"bearer", 6):
        return None
    if n == 6:
        start = end = 6
    elif p[6] != b" ":
        return None
    else:
        start = 7
        end = n
        while start < end and p[start] == b" ":
            start += 1
        while end > start and p[end - 1] == b" ":
            end -= 1
    start_out[0] = start
    end_out[0] = end
    return value


def bearer_token(list headers not None, /):
    """The token of the request's ``Authorization: Bearer`` header (RFC 6750 §2.1).

    ``headers`` is the request's list of (name, value) bytes pairs. Returns the token
    bytes (``b""`` for a bare "Bearer"), None without an Authorization header or with
    another scheme, and False when there are several Authorization headers (ambiguous:
    the caller refuses rather than picking one).
    """
    cdef Py_ssize_t start = 0, end = 0
    value = _bearer_span(headers, &start, &end)
    if value is None or value is False:
        return value
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(<bytes>value) + start, end - start)


include "_jwt_step.pxi"
