# Included into _core.pyx (by _jwt.pxi): RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2),
# the RS* JWS algorithms, on libcrypto's bignum primitives.
#
# Why not EVP_PKEY_verify, as for the other algorithms: an RS256 token beyond the verified-
# token cache is mostly this one operation, and libcrypto's RSA_public_decrypt, under it,
# allocates a BN_CTX, two bignums and a buffer each call, takes a lock for the key's
# Montgomery context, and its BN_mod_exp_mont spends a product on the Montgomery "one" and
# two more converting into and out of Montgomery form. Here, per key, once: n's Montgomery
# context and C = R^e mod n (R the Montgomery radix); per signature s: x = s, then for each
# bit of e after the first a Montgomery square, and a Montgomery product by s where the bit
# is set. With mont(a, b) = a·b·R⁻¹ mod n every step keeps x = s^a·R^-(a-1) (a the bits of e
# consumed so far), so at the end x = s^e·R^-(e-1), and mont(x, C) = s^e mod n: for e = 65537,
# 16 squares and 2 products, nothing else (~2 µs a token less on this machine's EPYC).
#
# The encoded message is then compared whole with EMSA-PKCS1-v1_5(H) (§8.2.2 steps 3-4:
# encode and compare, nothing parsed out of it), which is what OpenSSL's RSA_verify does
# too: 0x00 0x01, at least eight 0xFF, 0x00, the DigestInfo of the hash with its NULL
# parameters (§9.2 note 1), the hash. The same signatures verify either way; s must be less
# than n (RSAVP1 step 1). Only public values take part: nothing here needs constant time.
# Single-threaded per key: the scratch bignums are the key's, and _core never releases the
# GIL around a verification.

cdef extern from "openssl/bn.h" nogil:
    ctypedef struct BIGNUM
    ctypedef struct BN_CTX
    ctypedef struct BN_MONT_CTX
    ctypedef unsigned long BN_ULONG
    BIGNUM* BN_new()
    void BN_free(BIGNUM* a)
    BN_CTX* BN_CTX_new()
    void BN_CTX_free(BN_CTX* c)
    BN_MONT_CTX* BN_MONT_CTX_new()
    void BN_MONT_CTX_free(BN_MONT_CTX* mont)
    int BN_MONT_CTX_set(BN_MONT_CTX* mont, const BIGNUM* mod, BN_CTX* ctx)
    int BN_to_montgomery(BIGNUM* r, const BIGNUM* a, BN_MONT_CTX* mont, BN_CTX* ctx)
    int BN_mod_mul_montgomery(BIGNUM* r, const BIGNUM* a, const BIGNUM* b,
                              BN_MONT_CTX* mont, BN_CTX* ctx)
    int BN_mod_exp(BIGNUM* r, const BIGNUM* a, const BIGNUM* p, const BIGNUM* m,
                   BN_CTX* ctx)
    BIGNUM* BN_bin2bn(const unsigned char* s, int len, BIGNUM* ret)
    int BN_bn2binpad(const BIGNUM* a, unsigned char* to, int tolen)
    int BN_ucmp(const BIGNUM* a, const BIGNUM* b)
    int BN_num_bits(const BIGNUM* a)
    int BN_is_bit_set(const BIGNUM* a, int n)
    int BN_set_word(BIGNUM* a, BN_ULONG w)
    BIGNUM* BN_copy(BIGNUM* a, const BIGNUM* b)

cdef extern from "openssl/evp.h" nogil:
    int EVP_PKEY_get_bn_param(const EVP_PKEY* pkey, const char* key_name, BIGNUM** bn)


cdef enum:
    _RSA_MAX_BYTES = 2048          # a 16,384-bit modulus (JwtKey's ceiling)
    _RSA_MAX_E_BITS = 64           # a longer public exponent: EVP_PKEY_verify instead
    _DIGEST_INFO_LEN = 19          # the DER DigestInfo of a SHA-2 hash, before the hash

# RFC 8017 §9.2 note 1: DigestInfo prefixes of SHA-256, SHA-384, SHA-512.
cdef const unsigned char* _DI_SHA256 = <const unsigned char*>(
    b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20")
cdef const unsigned char* _DI_SHA384 = <const unsigned char*>(
    b"\x30\x41\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x02\x05\x00\x04\x30")
cdef const unsigned char* _DI_SHA512 = <const unsigned char*>(
    b"\x30\x51\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x03\x05\x00\x04\x40")


cdef struct _RsaPublic:
    BIGNUM* n
    BIGNUM* fix                    # C = R^e mod n
    BIGNUM* s                      # scratch: the signature representative
    BIGNUM* x                      # scratch: the exponentiation
    BN_MONT_CTX* mont
    BN_CTX* ctx
    BIGNUM* e
    int e_bits
    int k                          # the modulus in bytes: the signature's length


cdef void _rsa_free(_RsaPublic* r) noexcept nogil:
    BN_free(r.n)
    BN_free(r.fix)
    BN_free(r.s)
    BN_free(r.x)
    BN_free(r.e)
    BN_MONT_CTX_free(r.mont)
    BN_CTX_free(r.ctx)
    r.n = r.fix = r.s = r.x = r.e = NULL
    r.mont = NULL
    r.ctx = NULL


cdef bint _rsa_prepare(_RsaPublic* r, EVP_PKEY* pkey, int k) noexcept nogil:
    # Fills r for pkey (k its modulus bytes). False, r left empty, when this path does not
    # take the key (a public exponent over _RSA_MAX_E_BITS bits, or 0; libcrypto failing):
    # EVP_PKEY_verify then verifies its signatures as before.
    cdef BIGNUM* radix = NULL
    cdef bint ok = False
    if k > _RSA_MAX_BYTES:
        return False
    if (EVP_PKEY_get_bn_param(pkey, b"n", &r.n) != 1
            or EVP_PKEY_get_bn_param(pkey, b"e", &r.e) != 1):
        ERR_clear_error()
        _rsa_free(r)
        return False
    r.e_bits = BN_num_bits(r.e)
    r.k = k
    r.ctx = BN_CTX_new()
    r.mont = BN_MONT_CTX_new()
    r.fix = BN_new()
    r.s = BN_new()
    r.x = BN_new()
    radix = BN_new()
    if (1 <= r.e_bits <= _RSA_MAX_E_BITS and r.ctx != NULL and r.mont != NULL
            and r.fix != NULL and r.s != NULL and r.x != NULL and radix != NULL
            and BN_MONT_CTX_set(r.mont, r.n, r.ctx) == 1
            and BN_set_word(radix, 1) == 1
            and BN_to_montgomery(radix, radix, r.mont, r.ctx) == 1       # R mod n
            and BN_mod_exp(r.fix, radix, r.e, r.n, r.ctx) == 1):         # R^e mod n
        ok = True
    BN_free(radix)
    if not ok:
        ERR_clear_error()
        _rsa_free(r)
    return ok


cdef bint _rsa_pkcs1_verify(_RsaPublic* r, const unsigned char* sig, Py_ssize_t slen,
                            const unsigned char* digest, unsigned int dlen) noexcept nogil:
    # True only when sig is a valid RSASSA-PKCS1-v1_5 signature of the SHA-2 hash
    # digest[0:dlen] (32, 48 or 64 bytes) under r's key.
    cdef unsigned char em[_RSA_MAX_BYTES]
    cdef const unsigned char* info
    cdef Py_ssize_t t, i
    cdef int bit
    if dlen == 32:
        info = _DI_SHA256
    elif dlen == 48:
        info = _DI_SHA384
    elif dlen == 64:
        info = _DI_SHA512
    else:
        return False
    t = _DIGEST_INFO_LEN + dlen
    if slen != r.k or r.k < t + 11:  # §9.2 step 3: "intended encoded message length too short"
        return False
    # RSAVP1 (§5.2.2): s = OS2IP(S), in [0, n-1].
    if BN_bin2bn(sig, <int>slen, r.s) == NULL:
        ERR_clear_error()
        return False
    if BN_ucmp(r.s, r.n) >= 0:
        return False
    if BN_copy(r.x, r.s) == NULL:
        ERR_clear_error()
        return False
    for bit in range(r.e_bits - 2, -1, -1):
        if BN_mod_mul_montgomery(r.x, r.x, r.x, r.mont, r.ctx) != 1:
            ERR_clear_error()
            return False
        if (BN_is_bit_set(r.e, bit)
                and BN_mod_mul_montgomery(r.x, r.x, r.s, r.mont, r.ctx) != 1):
            ERR_clear_error()
            return False
    if (BN_mod_mul_montgomery(r.x, r.x, r.fix, r.mont, r.ctx) != 1
            or BN_bn2binpad(r.x, em, r.k) != r.k):
        ERR_clear_error()
        return False
    # EM = 0x00 || 0x01 || PS (0xFF, k - t - 3 of them, at least 8) || 0x00 || T.
    if em[0] != 0 or em[1] != 1 or em[r.k - t - 1] != 0:
        return False
    for i in range(2, r.k - t - 1):
        if em[i] != 0xFF:
            return False
    return (memcmp(em + r.k - t, info, _DIGEST_INFO_LEN) == 0
            and memcmp(em + r.k - dlen, digest, dlen) == 0)
