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
# The result is then compared whole with EMSA-PKCS1-v1_5(H) (§8.2.2 steps 3-4: encode and
# compare, nothing parsed out of it), which is what OpenSSL's RSA_verify does too: 0x00
# 0x01, at least eight 0xFF, 0x00, the DigestInfo of the hash with its NULL parameters
# (§9.2 note 1), the hash. Compared as integers: the encoding's head, shifted past the hash,
# is a per-key bignum for each hash length, so a signature costs the hash's conversion and
# an addition rather than writing out k bytes (libcrypto's BN_bn2binpad, constant-time,
# was ~5,800 instructions). Two k-byte strings are equal exactly when their integers are.
# The same signatures verify either way; s must be less than n (RSAVP1 step 1). Only public
# values take part: nothing here needs constant time.
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
    int BN_ucmp(const BIGNUM* a, const BIGNUM* b)
    int BN_num_bits(const BIGNUM* a)
    int BN_is_bit_set(const BIGNUM* a, int n)
    int BN_set_word(BIGNUM* a, BN_ULONG w)
    BIGNUM* BN_copy(BIGNUM* a, const BIGNUM* b)
    int BN_lshift(BIGNUM* r, const BIGNUM* a, int n)
    int BN_add(BIGNUM* r, const BIGNUM* a, const BIGNUM* b)
    int BN_cmp(const BIGNUM* a, const BIGNUM* b)

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
    BIGNUM* head[3]                # SHA-256, -384, -512: EM with the hash's bytes zero
    BIGNUM* s                      # scratch: the signature representative
    BIGNUM* x                      # scratch: the exponentiation
    BIGNUM* em                     # scratch: the expected encoded message
    BN_MONT_CTX* mont
    BN_CTX* ctx
    BIGNUM* e
    int e_bits
    int k                          # the modulus in bytes: the signature's length


cdef void _rsa_free(_RsaPublic* r) noexcept nogil:
    cdef int i
    BN_free(r.n)
    BN_free(r.fix)
    BN_free(r.s)
    BN_free(r.x)
    BN_free(r.em)
    BN_free(r.e)
    for i in range(3):
        BN_free(r.head[i])
        r.head[i] = NULL
    BN_MONT_CTX_free(r.mont)
    BN_CTX_free(r.ctx)
    r.n = r.fix = r.s = r.x = r.em = r.e = NULL
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
    r.em = BN_new()
    radix = BN_new()
    if (1 <= r.e_bits <= _RSA_MAX_E_BITS and r.ctx != NULL and r.mont != NULL
            and r.fix != NULL and r.s != NULL and r.x != NULL and r.em != NULL
            and radix != NULL
            and BN_MONT_CTX_set(r.mont, r.n, r.ctx) == 1
            and BN_set_word(radix, 1) == 1
            and BN_to_montgomery(radix, radix, r.mont, r.ctx) == 1       # R mod n
            and BN_mod_exp(r.fix, radix, r.e, r.n, r.ctx) == 1           # R^e mod n
            and _em_head(r, 0, _DI_SHA256, 32) and _em_head(r, 1, _DI_SHA384, 48)
            and _em_head(r, 2, _DI_SHA512, 64)):
        ok = True
    BN_free(radix)
    if not ok:
        ERR_clear_error()
        _rsa_free(r)
    return ok


cdef bint _em_head(_RsaPublic* r, int i, const unsigned char* info,
                   int hlen) noexcept nogil:
    # r.head[i]: 0x00 0x01 PS 0x00 DigestInfo, then hlen zero bytes, as an integer; left
    # NULL (no signature verifies with that hash) when the key is too short for it (§9.2
    # step 3: "intended encoded message length too short"). False when libcrypto fails.
    cdef unsigned char em[_RSA_MAX_BYTES]
    cdef int t = _DIGEST_INFO_LEN + hlen, j
    if r.k < t + 11:
        return True
    em[0] = 0
    em[1] = 1
    for j in range(2, r.k - t - 1):
        em[j] = 0xFF
    em[r.k - t - 1] = 0
    memcpy(em + r.k - t, info, _DIGEST_INFO_LEN)
    r.head[i] = BN_bin2bn(em, r.k - hlen, NULL)
    return r.head[i] != NULL and BN_lshift(r.head[i], r.head[i], 8 * hlen) == 1


cdef bint _rsa_pkcs1_verify(_RsaPublic* r, const unsigned char* sig, Py_ssize_t slen,
                            const unsigned char* digest, unsigned int dlen) noexcept nogil:
    # True only when sig is a valid RSASSA-PKCS1-v1_5 signature of the SHA-2 hash
    # digest[0:dlen] (32, 48 or 64 bytes) under r's key.
    cdef BIGNUM* head
    cdef int bit
    if dlen == 32:
        head = r.head[0]
    elif dlen == 48:
        head = r.head[1]
    elif dlen == 64:
        head = r.head[2]
    else:
        return False
    if head == NULL or slen != r.k:
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
    # EM = 0x00 || 0x01 || PS (0xFF, k - t - 3 of them, at least 8) || 0x00 || T, T the
    # DigestInfo and the hash: the key's head plus the hash, as integers.
    if (BN_mod_mul_montgomery(r.x, r.x, r.fix, r.mont, r.ctx) != 1
            or BN_bin2bn(digest, <int>dlen, r.em) == NULL
            or BN_add(r.em, r.em, head) != 1):
        ERR_clear_error()
        return False
    return BN_cmp(r.x, r.em) == 0
