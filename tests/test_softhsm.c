/* Library-level tests against SoftHSM, and the measured SoftHSM 2.6.1
 * behaviours the code depends on ("facts"): if a module upgrade changes one,
 * a test here fails and points at the code that relies on it. */
#include "fixture.h"
#include <jansson.h>
#include "kc_key.h"
#include "kc_util.h"
#include "kc_gendoc.h"
#include "kc_vault.h"
#include "kc_manifest.h"
#include "kc_keystate.h"

/* Tests may speak PKCS#11 directly to check the module itself. */
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include <openssl/sha.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* --- raw PKCS#11 for the facts --- */

static CK_FUNCTION_LIST *F;
static CK_SLOT_ID SLOT;
static CK_SESSION_HANDLE S;
static CK_BBOOL T = CK_TRUE, FA = CK_FALSE;

static int free_slot(CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16, i;
    CK_TOKEN_INFO ti;

    if (F->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return 0;
    for (i = 0; i < n; i++)
        if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED)) {
            *out = slots[i];
            return 1;
        }
    return 0;
}

static void raw_open(void)
{
    const char *so = getenv("TEST_SO_PIN"), *pin = getenv("TEST_PIN");
    unsigned char label[32];
    CK_TOKEN_INFO ti;

    F = p11_kit_module_load(KC_SOFTHSM_MODULE, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(F);
    CU_ASSERT_EQUAL_FATAL(p11_kit_module_initialize(F), CKR_OK);
    CU_ASSERT_FATAL(free_slot(&SLOT));
    memset(label, ' ', 32);
    memcpy(label, "facts", 5);
    CU_ASSERT_EQUAL_FATAL(F->C_InitToken(SLOT, (CK_UTF8CHAR *)so, strlen(so), label), CKR_OK);
    /* Fact: the slot id of a token initialised in this process stays valid. */
    CU_ASSERT_EQUAL_FATAL(F->C_GetTokenInfo(SLOT, &ti), CKR_OK);
    CU_ASSERT_EQUAL(memcmp(ti.label, "facts ", 6), 0);
    CU_ASSERT_EQUAL_FATAL(
        F->C_OpenSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &S), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_Login(S, CKU_SO, (CK_UTF8CHAR *)so, strlen(so)), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_InitPIN(S, (CK_UTF8CHAR *)pin, strlen(pin)), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_Logout(S), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_Login(S, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin)), CKR_OK);
}

static void raw_close(void)
{
    F->C_CloseSession(S);
    p11_kit_module_finalize(F);
    p11_kit_module_release(F);
}

static void raw_rsa(CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    CK_ULONG bits = 2048;
    CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &T, 1},
                         {CKA_MODULUS_BITS, &bits, sizeof(bits)},
                         {CKA_WRAP, &T, 1},
                         {CKA_ENCRYPT, &T, 1}};
    CK_ATTRIBUTE vt[] = {
        {CKA_TOKEN, &T, 1}, {CKA_PRIVATE, &T, 1}, {CKA_UNWRAP, &T, 1}, {CKA_DECRYPT, &T, 1}};

    CU_ASSERT_EQUAL_FATAL(F->C_GenerateKeyPair(S, &m, pt, 4, vt, 4, pub, priv), CKR_OK);
}

static CK_ULONG count_objects(void)
{
    CK_OBJECT_HANDLE h[256];
    CK_ULONG n = 0;

    F->C_FindObjectsInit(S, NULL, 0);
    F->C_FindObjects(S, h, 256, &n);
    F->C_FindObjectsFinal(S);
    return n;
}

/* kc_p11_obj.c falls back from SHA-256 to SHA-1 on this answer. */
static void fact_oaep_sha256_refused(void)
{
    CK_OBJECT_HANDLE pub, priv;
    CK_RSA_PKCS_OAEP_PARAMS p256 = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS p1 = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p256, sizeof(p256)};

    raw_open();
    raw_rsa(&pub, &priv);
    CU_ASSERT_EQUAL(F->C_EncryptInit(S, &m, pub), CKR_ARGUMENTS_BAD);
    m.pParameter = &p1;
    CU_ASSERT_EQUAL(F->C_EncryptInit(S, &m, pub), CKR_OK);
    raw_close();
}

/* Dates are kept on the public key only (kc_p11_obj.c read_key). */
static void fact_private_dates_unreadable(void)
{
    CK_OBJECT_HANDLE pub, priv;
    CK_DATE d = {{'2', '0', '3', '0'}, {'0', '1'}, {'0', '1'}}, back;
    CK_ATTRIBUTE set = {CKA_END_DATE, &d, sizeof(d)}, get = {CKA_END_DATE, &back, sizeof(back)};

    raw_open();
    raw_rsa(&pub, &priv);
    CU_ASSERT_EQUAL(F->C_SetAttributeValue(S, priv, &set, 1), CKR_OK);
    CU_ASSERT_EQUAL(F->C_GetAttributeValue(S, priv, &get, 1), CKR_GENERAL_ERROR);
    CU_ASSERT_EQUAL(F->C_SetAttributeValue(S, pub, &set, 1), CKR_OK);
    CU_ASSERT_EQUAL(F->C_GetAttributeValue(S, pub, &get, 1), CKR_OK);
    raw_close();
}

/* kc_tok_oaep_unwrap leaves CKA_VALUE_LEN out of its template. */
static void fact_unwrap_value_len_refused(void)
{
    CK_OBJECT_HANDLE pub, priv, sec, out;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG len = 32;
    unsigned char value[32] = {1}, wrapped[512];
    CK_ULONG wl = sizeof(wrapped);
    CK_RSA_PKCS_OAEP_PARAMS p1 = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p1, sizeof(p1)};
    CK_ATTRIBUTE st[] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_TOKEN, &FA, 1},
                         {CKA_EXTRACTABLE, &T, 1},
                         {CKA_VALUE, value, sizeof(value)}};
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_TOKEN, &FA, 1},
                         {CKA_VALUE_LEN, &len, sizeof(len)}};

    raw_open();
    raw_rsa(&pub, &priv);
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, st, 5, &sec), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_WrapKey(S, &m, pub, sec, wrapped, &wl), CKR_OK);
    CU_ASSERT_EQUAL(F->C_UnwrapKey(S, &m, priv, wrapped, wl, ut, 4, &out), CKR_ATTRIBUTE_READ_ONLY);
    CU_ASSERT_EQUAL(F->C_UnwrapKey(S, &m, priv, wrapped, wl, ut, 3, &out), CKR_OK);
    raw_close();
}

/* kc_vault.c writes metadata generations because values cannot change. */
static void fact_data_value_immutable(void)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_OBJECT_HANDLE h;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &T, 1}, {CKA_VALUE, "one", 3}};
    CK_ATTRIBUTE v = {CKA_VALUE, "two", 3};

    raw_open();
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, t, 3, &h), CKR_OK);
    CU_ASSERT_EQUAL(F->C_SetAttributeValue(S, h, &v, 1), CKR_ATTRIBUTE_READ_ONLY);
    raw_close();
}

/* kc_tok_generate_rsa removes what a failed creation leaves behind. */
static void fact_failed_create_leaves_orphan(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &T, 1},
                        {CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_TRUSTED, &T, 1}};
    CK_OBJECT_HANDLE h;
    CK_ULONG before;

    raw_open();
    before = count_objects();
    CU_ASSERT_EQUAL(F->C_GenerateKey(S, &m, t, 5, &h), CKR_ATTRIBUTE_READ_ONLY);
    CU_ASSERT_EQUAL(count_objects(), before + 1);
    raw_close();
}

/* kc_tok_login explains the PIN flags: SoftHSM never locks, it only says
 * CKF_USER_PIN_COUNT_LOW. */
static void fact_no_lockout(void)
{
    CK_TOKEN_INFO ti;
    int i;

    raw_open();
    F->C_Logout(S);
    for (i = 0; i < 12; i++)
        CU_ASSERT_EQUAL(F->C_Login(S, CKU_USER, (CK_UTF8CHAR *)"wrong", 5), CKR_PIN_INCORRECT);
    CU_ASSERT_EQUAL(F->C_GetTokenInfo(SLOT, &ti), CKR_OK);
    CU_ASSERT(ti.flags & CKF_USER_PIN_COUNT_LOW);
    CU_ASSERT_FALSE(ti.flags & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY));
    raw_close();
}

/* kc_domain.c makes the domain wrap key as the SO: users cannot mark keys
 * trusted, and an HSM key (CKA_WRAP_WITH_TRUSTED) wraps only under a
 * trusted key. The backup domain's protection rests on both. */
static void fact_trusted_wrapping(void)
{
    const char *so = getenv("TEST_SO_PIN"), *pin = getenv("TEST_PIN");
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    unsigned char value[32] = {7}, blob[4096];
    CK_ULONG bits = 2048, len;
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &T, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &T, 1},
                         {CKA_PRIVATE, &T, 1},
                         {CKA_SENSITIVE, &T, 1},
                         {CKA_EXTRACTABLE, &T, 1},
                         {CKA_WRAP_WITH_TRUSTED, &T, 1}};
    CK_ATTRIBUTE kek[] = {{CKA_CLASS, &cls, sizeof(cls)},
                          {CKA_KEY_TYPE, &kt, sizeof(kt)},
                          {CKA_TOKEN, &T, 1},
                          {CKA_PRIVATE, &FA, 1},
                          {CKA_WRAP, &T, 1},
                          {CKA_VALUE, value, sizeof(value)},
                          {CKA_TRUSTED, &T, 1}};
    CK_OBJECT_HANDLE pub, priv, untrusted, trusted;

    raw_open();
    CU_ASSERT_EQUAL_FATAL(F->C_GenerateKeyPair(S, &gen, pt, 2, vt, 5, &pub, &priv), CKR_OK);
    CU_ASSERT_EQUAL(F->C_CreateObject(S, kek, 7, &trusted), CKR_ATTRIBUTE_READ_ONLY);
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, kek, 6, &untrusted), CKR_OK);
    len = sizeof(blob);
    CU_ASSERT_EQUAL(F->C_WrapKey(S, &kwp, untrusted, priv, blob, &len), CKR_KEY_NOT_WRAPPABLE);
    F->C_Logout(S);
    CU_ASSERT_EQUAL_FATAL(F->C_Login(S, CKU_SO, (CK_UTF8CHAR *)so, strlen(so)), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, kek, 7, &trusted), CKR_OK);
    F->C_Logout(S);
    CU_ASSERT_EQUAL_FATAL(F->C_Login(S, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin)), CKR_OK);
    /* handles of private objects go stale across a logout: find it again */
    {
        CK_OBJECT_CLASS pc = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE f[] = {{CKA_CLASS, &pc, sizeof(pc)}};
        CK_ULONG n = 0;
        F->C_FindObjectsInit(S, f, 1);
        F->C_FindObjects(S, &priv, 1, &n);
        F->C_FindObjectsFinal(S);
        CU_ASSERT_EQUAL_FATAL(n, 1);
    }
    len = sizeof(blob);
    CU_ASSERT_EQUAL(F->C_WrapKey(S, &kwp, trusted, priv, blob, &len), CKR_OK);
    raw_close();
}

/* kc_p11_obj.c: the domain unwrap key's CKA_UNWRAP_TEMPLATE decides what an
 * unwrapped key is. SoftHSM 2.6.1 refuses a caller's template that asks for
 * something else, or leaves one of the template's attributes out
 * (CKR_TEMPLATE_INCONSISTENT both). */
static void fact_unwrap_template_enforced(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY, pcls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_AES, rsa = CKK_RSA;
    unsigned char value[32] = {9}, blob[4096];
    CK_ULONG bits = 2048, len = sizeof(blob);
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &FA, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &FA, 1}, {CKA_SENSITIVE, &FA, 1}, {CKA_EXTRACTABLE, &T, 1}};
    CK_ATTRIBUTE into[] = {{CKA_CLASS, &pcls, sizeof(pcls)},
                           {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                           {CKA_SENSITIVE, &T, 1},
                           {CKA_WRAP_WITH_TRUSTED, &T, 1}};
    CK_ATTRIBUTE kek[] = {{CKA_CLASS, &cls, sizeof(cls)},
                          {CKA_KEY_TYPE, &kt, sizeof(kt)},
                          {CKA_TOKEN, &FA, 1},
                          {CKA_VALUE, value, sizeof(value)},
                          {CKA_WRAP, &T, 1},
                          {CKA_UNWRAP, &T, 1},
                          {CKA_UNWRAP_TEMPLATE, into, sizeof(into)}};
    CK_ATTRIBUTE loose[] = {{CKA_CLASS, &pcls, sizeof(pcls)},
                            {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                            {CKA_TOKEN, &FA, 1},
                            {CKA_SENSITIVE, &FA, 1}};
    CK_BBOOL sens = CK_FALSE;
    CK_ATTRIBUTE get = {CKA_SENSITIVE, &sens, 1};
    CK_OBJECT_HANDLE pub, priv, k, out;

    raw_open();
    CU_ASSERT_EQUAL_FATAL(F->C_GenerateKeyPair(S, &gen, pt, 2, vt, 3, &pub, &priv), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, kek, 7, &k), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_WrapKey(S, &kwp, k, priv, blob, &len), CKR_OK);
    CU_ASSERT_EQUAL(F->C_UnwrapKey(S, &kwp, k, blob, len, loose, 4, &out),
                    CKR_TEMPLATE_INCONSISTENT);
    /* leaving them out is refused the same way */
    CU_ASSERT_EQUAL(F->C_UnwrapKey(S, &kwp, k, blob, len, loose, 3, &out),
                    CKR_TEMPLATE_INCONSISTENT);
    /* asking for exactly what the template says works, and is what it says */
    loose[2] = (CK_ATTRIBUTE){CKA_SENSITIVE, &T, 1};
    loose[3] = (CK_ATTRIBUTE){CKA_WRAP_WITH_TRUSTED, &T, 1};
    CU_ASSERT_EQUAL_FATAL(F->C_UnwrapKey(S, &kwp, k, blob, len, loose, 4, &out), CKR_OK);
    CU_ASSERT_EQUAL(F->C_GetAttributeValue(S, out, &get, 1), CKR_OK);
    CU_ASSERT_EQUAL(sens, CK_TRUE);
    raw_close();
}

/* kc_p11_obj.c makes every secret key CKA_MODIFIABLE=FALSE and
 * CKA_COPYABLE=FALSE so that no usage can be added to it: SoftHSM 2.6.1
 * refuses both with CKR_ACTION_PROHIBITED. */
static void fact_fixed_keys(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    unsigned char value[32] = {3};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &FA, 1},
                        {CKA_VALUE, value, sizeof(value)},
                        {CKA_UNWRAP, &T, 1},
                        {CKA_DECRYPT, &FA, 1},
                        {CKA_MODIFIABLE, &FA, 1},
                        {CKA_COPYABLE, &FA, 1}};
    CK_ATTRIBUTE dec = {CKA_DECRYPT, &T, 1};
    CK_OBJECT_HANDLE k, copy;

    raw_open();
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, t, 8, &k), CKR_OK);
    CU_ASSERT_EQUAL(F->C_SetAttributeValue(S, k, &dec, 1), CKR_ACTION_PROHIBITED);
    CU_ASSERT_EQUAL(F->C_CopyObject(S, k, &dec, 1, &copy), CKR_ACTION_PROHIBITED);
    raw_close();
}

/* kc_p11_crypto.c: a GCM tag that does not verify is CKR_GENERAL_ERROR on
 * SoftHSM 2.6.1, and the seal of a backup maps it to an integrity error. */
static void fact_gcm_bad_tag(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    unsigned char value[32] = {5}, iv[12] = {1}, msg[40] = {2}, ct[64], pt[64];
    CK_GCM_PARAMS gp = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &FA, 1},
                        {CKA_VALUE, value, sizeof(value)},
                        {CKA_ENCRYPT, &T, 1},
                        {CKA_DECRYPT, &T, 1}};
    CK_ULONG clen = sizeof(ct), plen = sizeof(pt);
    CK_OBJECT_HANDLE k;

    raw_open();
    CU_ASSERT_EQUAL_FATAL(F->C_CreateObject(S, t, 6, &k), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_EncryptInit(S, &m, k), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(F->C_Encrypt(S, msg, sizeof(msg), ct, &clen), CKR_OK);
    CU_ASSERT_EQUAL(clen, sizeof(msg) + 16);
    ct[3] ^= 1;
    CU_ASSERT_EQUAL_FATAL(F->C_DecryptInit(S, &m, k), CKR_OK);
    CU_ASSERT_EQUAL(F->C_Decrypt(S, ct, clen, pt, &plen), CKR_GENERAL_ERROR);
    raw_close();
}

static const kc_test_case fact_cases[] = {
    {"unwrap template enforced", fact_unwrap_template_enforced},
    {"unmodifiable, uncopyable keys", fact_fixed_keys},
    {"GCM bad tag", fact_gcm_bad_tag},
    {"trusted wrapping", fact_trusted_wrapping},
    {"OAEP SHA-256 refused", fact_oaep_sha256_refused},
    {"private dates unreadable", fact_private_dates_unreadable},
    {"unwrap CKA_VALUE_LEN refused", fact_unwrap_value_len_refused},
    {"data value immutable", fact_data_value_immutable},
    {"failed create leaves orphan", fact_failed_create_leaves_orphan},
    {"no PIN lockout", fact_no_lockout},
    {NULL, NULL},
};

/* --- library tests --- */

static kc_rc env_pin(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out, kc_error *err)
{
    const char *v = getenv(kind == KC_PIN_SO || kind == KC_PIN_NEW_SO ? "TEST_SO_PIN" : "TEST_PIN");
    (void)arg;
    (void)vault;
    *out = kc_secret_dup(v, strlen(v));
    return *out ? KC_OK : kc_error_set(err, KC_ERR, "oom");
}

static kc_ctx *ctx_new(void)
{
    kc_ctx *ctx = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, env_pin, NULL, &ctx, &e), KC_OK);
    return ctx;
}

static kc_vault_meta meta(const char *name)
{
    kc_vault_meta m;

    memset(&m, 0, sizeof(m));
    snprintf(m.name, sizeof(m.name), "%s", name);
    strcpy(m.subscription, "sub-a");
    strcpy(m.region, "westus");
    m.retention_days = 90;
    return m;
}

static void test_vault_init_and_open(void)
{
    kc_vault_meta m = meta("VaultA1");
    kc_ctx *ctx = ctx_new();
    kc_vault *v = NULL, *w = NULL;
    kc_error e;
    int adopted = -1;

    m.purge_protection = 1;
    m.retention_days = 30;
    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);
    CU_ASSERT_EQUAL(adopted, 0);
    /* the manifest, then signed again with the key state's first generation */
    CU_ASSERT_EQUAL(v->meta.generation, 2);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(v->state, "generation")), 1);
    kc_vault_free(v);
    kc_ctx_free(ctx);

    ctx = ctx_new(); /* a new process, as far as the module is concerned */
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultA1", &w, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(w->meta.subscription, "sub-a");
    CU_ASSERT_EQUAL(w->meta.retention_days, 30);
    CU_ASSERT_EQUAL(w->meta.purge_protection, 1);
    CU_ASSERT_FALSE(kc_tok_is_logged_in(w->tok)); /* metadata needs no PIN */
    kc_vault_free(w);
    CU_ASSERT_EQUAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "already initialised");
    kc_ctx_free(ctx);
}

static void test_vault_adopt(void)
{
    kc_vault_meta m = meta("Adopted1");
    kc_ctx *ctx = ctx_new();
    kc_secret *so = kc_secret_dup(getenv("TEST_SO_PIN"), strlen(getenv("TEST_SO_PIN")));
    kc_secret *pin = kc_secret_dup(getenv("TEST_PIN"), strlen(getenv("TEST_PIN")));
    kc_tok *tok = NULL;
    kc_vault *v = NULL;
    kc_error e;
    int adopted = 0;

    /* A token initialised by someone else, with no keycustody metadata. */
    CU_ASSERT_EQUAL_FATAL(kc_p11_free_token(ctx->p11, NULL, &tok, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_tok_init_token(tok, "Adopted1", so, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_tok_init_pin(tok, so, pin, &e), KC_OK);
    kc_ctx_free(ctx);

    ctx = ctx_new();
    CU_ASSERT_EQUAL(kc_vault_open(ctx, "Adopted1", &v, &e), KC_NOT_FOUND);
    ASSERT_HAS(e.msg, "is not a keycustody vault");
    ASSERT_HAS(e.hint, "vault init Adopted1");
    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);
    CU_ASSERT_EQUAL(adopted, 1);
    kc_vault_free(v);
    kc_ctx_free(ctx);
    kc_secret_free(so);
    kc_secret_free(pin);
}

/* An init that stopped after C_InitToken converges when run again. */
static void test_vault_init_resumes_without_user_pin(void)
{
    kc_vault_meta m = meta("Half1");
    kc_ctx *ctx = ctx_new();
    kc_secret *so = kc_secret_dup(getenv("TEST_SO_PIN"), strlen(getenv("TEST_SO_PIN")));
    kc_tok *tok = NULL;
    kc_vault *v = NULL;
    kc_error e;
    int adopted = 0;

    CU_ASSERT_EQUAL_FATAL(kc_p11_free_token(ctx->p11, NULL, &tok, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_tok_init_token(tok, "Half1", so, &e), KC_OK);
    kc_ctx_free(ctx);
    ctx = ctx_new();
    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);
    CU_ASSERT_EQUAL(adopted, 1);
    CU_ASSERT_TRUE(kc_tok_is_logged_in(v->tok));
    kc_vault_free(v);
    kc_ctx_free(ctx);
    kc_secret_free(so);
}

/* Writes raw as a vault metadata object. */
static void put_meta_raw(kc_tok *tok, const char *raw)
{
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_tok_create_data(tok, KC_GENDOC_APPLICATION, KC_VAULT_META_LABEL, raw,
                                             strlen(raw), 0, NULL, &e),
                          KC_OK);
}

/* Writes m, encoded, as a vault metadata object. */
static void put_meta(kc_tok *tok, const kc_vault_meta *m)
{
    char *json = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_vault_meta_encode(m, &json, &e), KC_OK);
    put_meta_raw(tok, json);
    free(json);
}

static void test_vault_meta_generations(void)
{
    kc_vault_meta m = meta("VaultG1");
    kc_ctx *ctx = ctx_new();
    kc_vault *v = NULL;
    kc_error e;
    int adopted;

    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);
    /* each update is a new signed generation, and the older one goes */
    strcpy(v->meta.region, "eastus2");
    CU_ASSERT_EQUAL_FATAL(kc_vault_save_meta(v, &e), KC_OK);
    m = v->meta;
    kc_vault_free(v);
    kc_ctx_free(ctx);
    ctx = ctx_new();
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultG1", &v, &e), KC_OK);
    CU_ASSERT_EQUAL(v->meta.generation, m.generation);
    CU_ASSERT(v->meta.generation >= 2);
    CU_ASSERT_STRING_EQUAL(v->meta.region, "eastus2");
    CU_ASSERT_EQUAL(kc_test_objects("VaultG1") >= 0, 1);
    /* a generation written without the vault key (anyone can make a public
     * object) is tampering: not read, not passed over */
    m.generation += 5;
    m.purge_protection = 0;
    put_meta(v->tok, &m);
    kc_vault_free(v);
    kc_ctx_free(ctx);
    ctx = ctx_new();
    CU_ASSERT_EQUAL(kc_vault_open(ctx, "VaultG1", &v, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "holds a public vault manifest ('keycustody-vault') that is not valid");
    kc_ctx_free(ctx);
}

static void test_vault_meta_all_invalid(void)
{
    kc_ctx *ctx = ctx_new();
    kc_secret *so = kc_secret_dup(getenv("TEST_SO_PIN"), strlen(getenv("TEST_SO_PIN")));
    kc_secret *pin = kc_secret_dup(getenv("TEST_PIN"), strlen(getenv("TEST_PIN")));
    kc_tok *tok = NULL;
    kc_vault *v = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_p11_free_token(ctx->p11, NULL, &tok, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_tok_init_token(tok, "Broken1", so, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_tok_init_pin(tok, so, pin, &e), KC_OK);
    put_meta_raw(tok, "{ not json");
    kc_ctx_free(ctx);
    ctx = ctx_new();
    CU_ASSERT_EQUAL(kc_vault_open(ctx, "Broken1", &v, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "cannot open vault 'Broken1': token 'Broken1' holds vault metadata but no "
                      "vault key to vouch for it");
    kc_ctx_free(ctx);
    kc_secret_free(so);
    kc_secret_free(pin);
}

/* A manifest write finds the vault key's two halves in one search; a
 * public half gone since the vault was opened (anyone may destroy a
 * public object) stops it: nothing is signed, nothing written. */
static void test_vault_key_half_gone_before_write(void)
{
    kc_vault_meta m = meta("VaultG5");
    kc_ctx *ctx = ctx_new();
    kc_vault *v = NULL;
    kc_key_obj *objs = NULL;
    kc_data_obj *docs = NULL;
    size_t n = 0, ndocs = 0;
    int adopted;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);

    CU_ASSERT_EQUAL_FATAL(kc_tok_find_public_keys(v->tok, KC_MANIFEST_KEY_LABEL, &objs, &n, &e),
                          KC_OK);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(v->tok, objs[0].handle, &e), KC_OK);
    free(objs);
    v->meta.retention_days = 30;
    CU_ASSERT_EQUAL(kc_manifest_write(v, &v->meta, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "has the private half of its vault key but not its public half");
    CU_ASSERT_EQUAL_FATAL(kc_tok_find_data(v->tok, KC_GENDOC_APPLICATION, KC_VAULT_META_LABEL,
                                           KC_WHERE_PUBLIC, &docs, &ndocs, NULL, &e),
                          KC_OK);
    CU_ASSERT_EQUAL(ndocs, 1);
    kc_p11_data_objs_free(docs, ndocs);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

static void test_vault_list(void)
{
    kc_vault_meta m = meta("VaultL1");
    kc_ctx *ctx = ctx_new();
    kc_vault_entry *ents = NULL;
    kc_vault *v = NULL;
    kc_error e;
    size_t n = 0, i;
    int adopted, vaults = 0, free_tokens = 0;

    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);
    kc_vault_free(v);
    kc_ctx_free(ctx);
    ctx = ctx_new();
    CU_ASSERT_EQUAL_FATAL(kc_vault_list(ctx, &ents, &n, &e), KC_OK);
    for (i = 0; i < n; i++) {
        if (ents[i].is_vault) {
            vaults++;
            CU_ASSERT_STRING_EQUAL(ents[i].meta.name, "VaultL1");
        }
        if (!ents[i].token.initialized)
            free_tokens++;
    }
    CU_ASSERT_EQUAL(vaults, 1);
    CU_ASSERT_EQUAL(free_tokens, 1); /* SoftHSM always offers one free slot */
    free(ents);
    kc_ctx_free(ctx);
}

/* Two tokens with one label: naming it is refused, a URI with the serial works. */
static void test_duplicate_labels(void)
{
    kc_ctx *ctx = ctx_new();
    kc_secret *so = kc_secret_dup(getenv("TEST_SO_PIN"), strlen(getenv("TEST_SO_PIN")));
    kc_tok *tok = NULL;
    char uri[600];
    kc_error e;
    int i;

    for (i = 0; i < 2; i++) {
        kc_ctx_free(ctx);
        ctx = ctx_new(); /* SoftHSM offers a new free slot after C_Initialize */
        CU_ASSERT_EQUAL_FATAL(kc_p11_free_token(ctx->p11, NULL, &tok, &e), KC_OK);
        CU_ASSERT_EQUAL_FATAL(kc_tok_init_token(tok, "Twin1", so, &e), KC_OK);
        snprintf(uri, sizeof(uri), "pkcs11:token=Twin1;serial=%s", kc_tok_info_get(tok)->serial);
    }
    kc_ctx_free(ctx);
    ctx = ctx_new();
    CU_ASSERT_EQUAL(kc_p11_token(ctx->p11, "Twin1", &tok, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "2 tokens match 'Twin1'");
    ASSERT_HAS(e.hint, "serial=");
    CU_ASSERT_EQUAL(kc_p11_token(ctx->p11, uri, &tok, &e), KC_OK);
    kc_ctx_free(ctx);
    kc_secret_free(so);
}

static const kc_test_case vault_cases[] = {
    {"duplicate labels", test_duplicate_labels},
    {"init and open", test_vault_init_and_open},
    {"adopt an initialised token", test_vault_adopt},
    {"init resumes without user PIN", test_vault_init_resumes_without_user_pin},
    {"metadata generations", test_vault_meta_generations},
    {"metadata all invalid", test_vault_meta_all_invalid},
    {"the vault key's public half gone before a write", test_vault_key_half_gone_before_write},
    {"list", test_vault_list},
    {NULL, NULL},
};

/* --- keys --- */

static kc_vault *vault_new(kc_ctx *ctx, const char *name)
{
    kc_vault_meta m = meta(name);
    kc_vault *v = NULL;
    kc_error e;
    int adopted;

    CU_ASSERT_EQUAL_FATAL(kc_vault_init(ctx, &m, NULL, &v, &adopted, &e), KC_OK);
    return v;
}

static kc_key *key_new(kc_vault *v, const char *name, kc_protection prot, unsigned ops,
                       const char *expires)
{
    kc_key_create_opts o = {name, 2048, prot, ops, expires};
    kc_key *k = NULL;
    kc_error e;

    if (kc_key_create(v, &o, &k, &e) != KC_OK)
        fprintf(stderr, "\n  %s\n", e.msg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    return k;
}

static void test_key_attributes(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v = vault_new(ctx, "VaultK1");
    kc_key *k = key_new(v, "Key001", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    const kc_key_version *ver = &k->versions[0];
    char today[9], created[9];
    kc_error e;

    CU_ASSERT_EQUAL(k->nversions, 1);
    CU_ASSERT_EQUAL(ver->id_len, KC_VERSION_BYTES);
    CU_ASSERT_EQUAL(strlen(ver->version), 32);
    CU_ASSERT_EQUAL(ver->bits, 2048);
    CU_ASSERT_EQUAL(ver->protection, KC_PROT_HSM);
    CU_ASSERT_TRUE(ver->has_pub && ver->has_priv);
    /* HSM protection as the token reports it */
    CU_ASSERT_TRUE(ver->priv.sensitive);
    CU_ASSERT_TRUE(ver->priv.always_sensitive);
    CU_ASSERT_TRUE(ver->priv.extractable);
    CU_ASSERT_TRUE(ver->priv.wrap_with_trusted);
    CU_ASSERT_TRUE(ver->priv.local);
    /* only the asked-for operations */
    CU_ASSERT_EQUAL(ver->priv.ops, KC_OP_UNWRAP);
    CU_ASSERT_EQUAL(ver->pub.ops, KC_OP_WRAP);
    CU_ASSERT_EQUAL(kc_date_today(today, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_date_parse(ver->created, created), 0);
    CU_ASSERT_STRING_EQUAL(created, today);
    CU_ASSERT_STRING_EQUAL(ver->expires, "");
    ASSERT_HAS(ver->uri, "object=Key001");
    ASSERT_HAS(ver->uri, "token=VaultK1");
    CU_ASSERT_PTR_NULL(strstr(ver->uri, "type="));
    kc_key_free(k);

    k = key_new(v, "Soft", KC_PROT_SOFTWARE, KC_OP_WRAP | KC_OP_UNWRAP | KC_OP_SIGN, "9999-12-31");
    ver = &k->versions[0];
    CU_ASSERT_EQUAL(ver->protection, KC_PROT_SOFTWARE);
    CU_ASSERT_FALSE(ver->priv.sensitive);
    CU_ASSERT_FALSE(ver->priv.wrap_with_trusted);
    CU_ASSERT_EQUAL(ver->priv.ops, KC_OP_UNWRAP | KC_OP_SIGN);
    CU_ASSERT_STRING_EQUAL(ver->expires, "9999-12-31");
    kc_key_free(k);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

static size_t key_objects(kc_vault *v, const char *label)
{
    kc_key_obj *objs = NULL;
    kc_error e;
    size_t n = 0;

    CU_ASSERT_EQUAL(kc_tok_find_keys(v->tok, label, NULL, 0, &objs, &n, &e), KC_OK);
    free(objs);
    return n;
}

static void test_key_create_conflict_and_bad_input(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v = vault_new(ctx, "VaultK2");
    kc_key *k = key_new(v, "Key001", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    kc_key_create_opts o = {"Key001", 2048, KC_PROT_HSM, KC_OP_WRAP, NULL};
    kc_key *k2 = NULL;
    kc_error e;

    kc_key_free(k);
    CU_ASSERT_EQUAL(kc_key_create(v, &o, &k2, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "cannot create key 'Key001' in vault 'VaultK2'");
    CU_ASSERT_EQUAL(key_objects(v, "Key001"), 2); /* untouched */
    o.name = "Key002";
    o.bits = 1024;
    CU_ASSERT_EQUAL(kc_key_create(v, &o, &k2, &e), KC_USAGE);
    o.bits = 2048;
    o.expires = "2020-01-01";
    CU_ASSERT_EQUAL(kc_key_create(v, &o, &k2, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "in the past");
    o.expires = "31/12/9999";
    CU_ASSERT_EQUAL(kc_key_create(v, &o, &k2, &e), KC_USAGE);
    CU_ASSERT_EQUAL(key_objects(v, "Key002"), 0);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

/* A module that makes the pair and then reports failure: nothing stays. */
static void test_key_create_failure_leaves_nothing(void)
{
    kc_ctx *ctx;
    kc_vault *v;
    kc_key_create_opts o = {"Key001", 2048, KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL};
    kc_key_obj *objs = NULL;
    kc_key *k = NULL;
    kc_error e;
    size_t n = 0, before;

    /* the 1st key pair is the vault key that vault init makes; the 2nd the key's */
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_GenerateKeyPair", "CKR_DEVICE_ERROR", 2, 1, &e),
                          KC_OK);
    ctx = ctx_new();
    v = vault_new(ctx, "VaultK3");
    CU_ASSERT_EQUAL_FATAL(kc_ctx_login(ctx, v->tok, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_tok_find_keys(v->tok, NULL, NULL, 0, &objs, &before, &e), KC_OK);
    free(objs);
    CU_ASSERT_EQUAL(kc_key_create(v, &o, &k, &e), KC_TOKEN);
    CU_ASSERT_EQUAL(kc_p11_fault_calls(), 2);
    CU_ASSERT_STRING_EQUAL(e.func, "C_GenerateKeyPair");
    CU_ASSERT_EQUAL(kc_tok_find_keys(v->tok, NULL, NULL, 0, &objs, &n, &e), KC_OK);
    free(objs);
    CU_ASSERT_EQUAL(n, before);
    kc_p11_fault_disarm();
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

/* The seam armed as "*" (what bench_keycreate times a create with): every
 * call reaches the module and succeeds, and each function's calls are
 * counted apart. */
static void test_every_call_timed(void)
{
    kc_ctx *ctx;
    kc_vault *v;
    kc_key_create_opts o = {"Key001", 2048, KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL};
    kc_key *k = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("*", "CKR_DEVICE_ERROR", 1, 0, &e), KC_OK);
    ctx = ctx_new();
    v = vault_new(ctx, "VaultK5");
    CU_ASSERT_EQUAL_FATAL(kc_ctx_login(ctx, v->tok, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_key_create(v, &o, &k, &e), KC_OK);
    /* vault init's pair (the vault key) and the key's */
    CU_ASSERT_EQUAL(kc_p11_fault_calls_of("C_GenerateKeyPair"), 2);
    CU_ASSERT(kc_p11_fault_calls_of("C_Login") >= 1);
    CU_ASSERT(kc_p11_fault_calls_of("C_FindObjectsInit") > 0);
    CU_ASSERT(kc_p11_fault_seconds_of("C_GenerateKeyPair") > 0);
    CU_ASSERT(kc_p11_fault_seconds() >= kc_p11_fault_seconds_of("C_GenerateKeyPair"));
    CU_ASSERT_EQUAL(kc_p11_fault_calls_of("C_Bogus"), 0);
    kc_p11_fault_disarm();
    kc_key_free(k);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

static void test_key_public_pem(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v = vault_new(ctx, "VaultK4");
    kc_key *k = key_new(v, "Key001", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    char *pem = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_key_public_pem(v, k, &k->versions[0], &pem, &e), KC_OK);
    CU_ASSERT_EQUAL(strncmp(pem, "-----BEGIN PUBLIC KEY-----\n", 27), 0);
    ASSERT_HAS(pem, "-----END PUBLIC KEY-----");
    free(pem);
    kc_key_free(k);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

static const kc_test_case key_cases[] = {
    {"attributes", test_key_attributes},
    {"conflict and bad input", test_key_create_conflict_and_bad_input},
    {"every call timed", test_every_call_timed},
    {"failed create leaves nothing", test_key_create_failure_leaves_nothing},
    {"public PEM", test_key_public_pem},
    {NULL, NULL},
};

/* --- wrap and unwrap --- */

static kc_secret *secret32(void)
{
    kc_secret *s = kc_secret_new(32);
    size_t i;

    for (i = 0; i < 32; i++)
        s->data[i] = (unsigned char)(i * 7 + 1);
    s->len = 32;
    return s;
}

static void test_wrap_round_trip_sha1_on_softhsm(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v = vault_new(ctx, "VaultW1");
    kc_key *k = key_new(v, "Key001", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    kc_secret *s = secret32(), *back = NULL;
    unsigned char *w = NULL;
    size_t wl = 0;
    kc_oaep used = KC_OAEP_AUTO;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_key_wrap(v, k, &k->versions[0], KC_OAEP_AUTO, s, &w, &wl, &used, &e),
                          KC_OK);
    /* SoftHSM 2.6.1 takes only SHA-1: the automatic choice falls back. */
    CU_ASSERT_EQUAL(used, KC_OAEP_SHA1);
    CU_ASSERT_EQUAL(wl, 256);
    CU_ASSERT_EQUAL_FATAL(kc_key_unwrap(v, k, &k->versions[0], used, w, wl, &back, &e), KC_OK);
    CU_ASSERT_EQUAL(back->len, 32);
    CU_ASSERT_EQUAL(memcmp(back->data, s->data, 32), 0);
    kc_secret_free(back);
    /* a damaged blob */
    w[10] ^= 1;
    CU_ASSERT_EQUAL(kc_key_unwrap(v, k, &k->versions[0], used, w, wl, &back, &e), KC_TOKEN);
    CU_ASSERT_STRING_EQUAL(e.func, "C_UnwrapKey");
    ASSERT_HAS(e.hint, "altered");
    /* SHA-256 asked for explicitly: the module's refusal is explained */
    CU_ASSERT_EQUAL(kc_key_unwrap(v, k, &k->versions[0], KC_OAEP_SHA256, w, wl, &back, &e),
                    KC_TOKEN);
    ASSERT_HAS(e.hint, "does not take RSA-OAEP-256");
    free(w);
    kc_secret_free(s);
    kc_key_free(k);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

static void test_wrap_respects_dates(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v = vault_new(ctx, "VaultW2");
    kc_key *k = key_new(v, "Key001", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, "2031-01-01");
    kc_secret *s = secret32(), *back = NULL;
    unsigned char *w = NULL, *w2 = NULL;
    size_t wl = 0, wl2 = 0;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_key_wrap(v, k, &k->versions[0], KC_OAEP_SHA1, s, &w, &wl, NULL, &e),
                          KC_OK);
    setenv("KEYCUSTODY_NOW", "2031-01-02T00:00:00Z", 1);
    CU_ASSERT_EQUAL(kc_key_wrap(v, k, &k->versions[0], KC_OAEP_SHA1, s, &w2, &wl2, NULL, &e),
                    KC_DENIED);
    ASSERT_HAS(e.msg, "expired on 2031-01-01");
    /* unwrap still works after expiry, as in Key Vault */
    CU_ASSERT_EQUAL(kc_key_unwrap(v, k, &k->versions[0], KC_OAEP_SHA1, w, wl, &back, &e), KC_OK);
    kc_secret_free(back);
    setenv("KEYCUSTODY_NOW", "2020-01-01T00:00:00Z", 1);
    CU_ASSERT_EQUAL(kc_key_wrap(v, k, &k->versions[0], KC_OAEP_SHA1, s, &w2, &wl2, NULL, &e),
                    KC_DENIED);
    ASSERT_HAS(e.msg, "not valid before");
    unsetenv("KEYCUSTODY_NOW");
    free(w);
    kc_secret_free(s);
    kc_key_free(k);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

/* The token itself refuses an operation the key does not allow. */
static void test_token_enforces_ops(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v = vault_new(ctx, "VaultW3");
    kc_key *k = key_new(v, "WrapOnly", KC_PROT_HSM, KC_OP_WRAP, NULL);
    kc_secret *s = secret32(), *back = NULL;
    unsigned char *w = NULL;
    size_t wl = 0;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_key_wrap(v, k, &k->versions[0], KC_OAEP_SHA1, s, &w, &wl, NULL, &e),
                          KC_OK);
    CU_ASSERT_EQUAL(kc_key_unwrap(v, k, &k->versions[0], KC_OAEP_SHA1, w, wl, &back, &e),
                    KC_DENIED);
    ASSERT_HAS(e.msg, "does not allow unwrapKey");
    /* below the tool's own check, the token says no too */
    CU_ASSERT_EQUAL(
        kc_tok_oaep_unwrap(v->tok, k->versions[0].priv.handle, KC_OAEP_SHA1, w, wl, &back, &e),
        KC_DENIED);
    CU_ASSERT_STRING_EQUAL(kc_p11_rv_name(e.rv), "CKR_KEY_FUNCTION_NOT_PERMITTED");
    free(w);
    kc_secret_free(s);
    kc_key_free(k);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

static const kc_test_case wrap_cases[] = {
    {"round trip, SHA-1 on SoftHSM", test_wrap_round_trip_sha1_on_softhsm},
    {"dates", test_wrap_respects_dates},
    {"token enforces ops", test_token_enforces_ops},
    {NULL, NULL},
};

/* --- documents: one writer of a generation wins (kc_gendoc.h) --- */

#define DOC "keycustody-test-doc"

/* "gen=N [base=HEX ]payload": valid when N parses. */
static kc_rc doc_check(const unsigned char *buf, size_t len, unsigned long *generation,
                       char base[KC_GENDOC_DIGEST_HEX + 1], void *arg, kc_error *err)
{
    char text[160];
    int at = 0;

    (void)arg;
    if (len >= sizeof(text))
        return kc_error_set(err, KC_INTEGRITY, "too long");
    memcpy(text, buf, len);
    text[len] = '\0';
    base[0] = '\0';
    if (sscanf(text, "gen=%lu %n", generation, &at) != 1 || at == 0)
        return kc_error_set(err, KC_INTEGRITY, "bad");
    if (strncmp(text + at, "base=", 5) == 0 && sscanf(text + at, "base=%64[0-9a-f] ", base) != 1)
        return kc_error_set(err, KC_INTEGRITY, "bad base");
    return KC_OK;
}

static kc_tok *doc_token(kc_ctx *ctx)
{
    kc_tok *tok = NULL;
    kc_error e;

    if (kc_p11_token(ctx->p11, "Docs1", &tok, &e) != KC_OK)
        fprintf(stderr, "\n  token Docs1: %s\n", e.msg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    return tok;
}

static void docs_token_init(void)
{
    kc_ctx *ctx = ctx_new();
    kc_secret *so = kc_secret_dup(getenv("TEST_SO_PIN"), strlen(getenv("TEST_SO_PIN")));
    kc_tok *tok = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_p11_free_token(ctx->p11, NULL, &tok, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_tok_init_token(tok, "Docs1", so, &e), KC_OK); /* ctx keeps tok */
    kc_secret_free(so);
    kc_ctx_free(ctx);
}

/* The payload of the current generation ("" when none), its ref and gen. */
static const char *doc_get(kc_tok *tok, const char *label, kc_gendoc_ref *ref)
{
    static char text[160];
    unsigned char *buf = NULL;
    unsigned long next = 0;
    size_t len = 0;
    kc_error e;
    kc_rc r = kc_gendoc_read(tok, label, KC_WHERE_PUBLIC, "test document", doc_check, NULL, &buf,
                             &len, &next, ref, &e);
    const char *sp;

    text[0] = '\0';
    if (r != KC_OK) {
        free(buf);
        return r == KC_NOT_FOUND ? "" : "(error)";
    }
    CU_ASSERT_EQUAL(next, ref->generation + 1);
    snprintf(text, sizeof(text), "%.*s", (int)len, (const char *)buf);
    free(buf);
    sp = strchr(text, ' ');
    if (sp != NULL && strncmp(sp + 1, "base=", 5) == 0)
        sp = strchr(sp + 1, ' ');
    return sp != NULL ? sp + 1 : "";
}

/* A document's text: what a writer over base makes. */
static void doc_text(char *text, size_t cap, unsigned long gen, const char *payload,
                     const kc_gendoc_ref *base)
{
    if (base != NULL && base->handle != 0)
        snprintf(text, cap, "gen=%lu base=%s %s", gen, base->digest, payload);
    else
        snprintf(text, cap, "gen=%lu %s", gen, payload);
}

static kc_rc doc_put(kc_tok *tok, const char *label, unsigned long gen, const char *payload,
                     const kc_gendoc_ref *base, kc_error *e)
{
    char text[160];

    doc_text(text, sizeof(text), gen, payload, base);
    return kc_gendoc_write(tok, label, 0, "test document", text, gen, base, doc_check, NULL, e);
}

/* An object made as a writer over base that was killed leaves it. */
static void doc_plant(kc_tok *tok, unsigned long gen, const char *payload,
                      const kc_gendoc_ref *base)
{
    char text[160];
    kc_error e;

    doc_text(text, sizeof(text), gen, payload, base);
    CU_ASSERT_EQUAL_FATAL(
        kc_tok_create_data(tok, KC_GENDOC_APPLICATION, DOC, text, strlen(text), 0, NULL, &e),
        KC_OK);
}

static size_t doc_objects(kc_tok *tok, const char *label)
{
    kc_data_obj *objs = NULL;
    size_t n = 0;
    kc_error e;

    CU_ASSERT_EQUAL(
        kc_tok_find_data(tok, KC_GENDOC_APPLICATION, label, KC_WHERE_PUBLIC, &objs, &n, NULL, &e),
        KC_OK);
    kc_p11_data_objs_free(objs, n);
    return n;
}

/* A new Docs1 token whose document is "one", generation 1, committed and
 * recorded; its ref in *ref. */
static kc_tok *docs_with_one(kc_ctx **ctx, kc_gendoc_ref *ref)
{
    kc_tok *tok;
    kc_error e;

    docs_token_init();
    *ctx = ctx_new();
    tok = doc_token(*ctx);
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 1, "one", NULL, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, ref), "one");
    return tok;
}

/* Fact: of two processes destroying one object at once, exactly one is told
 * CKR_OK; the other CKR_OBJECT_HANDLE_INVALID or CKR_FUNCTION_FAILED, the
 * object gone. kc_gendoc_write commits on this. */
static void fact_destroy_race(void)
{
    char *out = NULL;

    docs_token_init();
    CU_ASSERT_EQUAL(
        kc_test_sh(&out, "'%s' destroy-race '%s' Docs1 60", KC_ATTACK_P11, KC_SOFTHSM_MODULE), 0);
    ASSERT_HAS(out, "rounds 60, exactly one winner 60,");
    ASSERT_HAS(out, ", other 0");
}

static void test_docs_second_writer_loses(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref, again;
    kc_error e;

    docs_token_init();
    ctx = ctx_new();
    tok = doc_token(ctx);
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 1, "first", NULL, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "first");
    CU_ASSERT_EQUAL(ref.generation, 1);
    /* two writers read generation 1; the first to commit wins */
    CU_ASSERT_EQUAL(doc_put(tok, DOC, 2, "A", &ref, &e), KC_OK);
    CU_ASSERT_EQUAL(doc_put(tok, DOC, 2, "B", &ref, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "vault 'Docs1' changed while this command ran: another keycustody (on "
                      "another host?) wrote a newer generation of its test document; nothing was "
                      "written");
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &again), "A");
    CU_ASSERT_EQUAL(again.generation, 2);
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
    CU_ASSERT_EQUAL(doc_objects(tok, DOC KC_GENDOC_COMMIT_SUFFIX), 1);
    kc_ctx_free(ctx);
}

static void test_docs_killed_writers(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref;
    kc_error e;
    const char *got;
    struct timespec t0, t1;

    tok = docs_with_one(&ctx, &ref);
    /* killed before its commit: what it made was never the document */
    doc_plant(tok, 2, "uncommitted", &ref);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "one");
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 2, "two", &ref, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "two");
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1); /* the write removed it */
    /* killed after its commit, before its commit record: its document */
    doc_plant(tok, 3, "committed", &ref);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, ref.handle, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "committed");
    CU_ASSERT_EQUAL(ref.generation, 3);
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 4, "four", &ref, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "four");
    /* and beside it one killed before its commit: neither was reported
     * done; the reader waits for a commit record, then takes the one with
     * the lower digest, the same every time */
    doc_plant(tok, 5, "x", &ref);
    doc_plant(tok, 5, "y", &ref);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, ref.handle, &e), KC_OK);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    got = doc_get(tok, DOC, &ref);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CU_ASSERT(strcmp(got, "x") == 0 || strcmp(got, "y") == 0);
    CU_ASSERT(t1.tv_sec - t0.tv_sec >= 1); /* it waited */
    {
        char first[8];
        size_t removed = 0;

        snprintf(first, sizeof(first), "%s", got);
        CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), first);
        /* but no writer writes over the guess: the other may be the winner,
         * only slow to leave its record */
        CU_ASSERT(ref.guessed);
        CU_ASSERT_EQUAL(doc_put(tok, DOC, 6, "six", &ref, &e), KC_CONFLICT);
        ASSERT_HAS(e.msg, "vault 'Docs1': its test document has two candidates of generation 5 "
                          "and no record of which was committed");
        CU_ASSERT_EQUAL(doc_objects(tok, DOC), 2);
        /* tidied ('vault validate --repair'): the guess is kept, and written over */
        CU_ASSERT_EQUAL(kc_gendoc_tidy(tok, DOC, KC_WHERE_PUBLIC, doc_check, NULL, 1, &removed, &e),
                        KC_OK);
        CU_ASSERT(removed >= 1); /* the other candidate, and the records before */
        CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
        CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), first);
        CU_ASSERT_FALSE(ref.guessed);
        CU_ASSERT_FALSE(ref.unrecorded); /* the repair recorded it */
        CU_ASSERT_EQUAL(doc_objects(tok, DOC KC_GENDOC_COMMIT_SUFFIX), 1);
    }
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 6, "six", &ref, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "six");
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
    kc_ctx_free(ctx);
}

/* A module that destroys the base and loses the reply (a remote module; the
 * fault seam armed after): no other writer's record or candidate comes, so
 * the commit was this writer's, and the write stands. Before, the writer
 * took itself for the loser and removed its own document: none was left. */
static void test_docs_commit_reply_lost(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref;
    kc_error e;

    docs_token_init();
    ctx = ctx_new();
    CU_ASSERT_EQUAL_FATAL(doc_put(doc_token(ctx), DOC, 1, "one", NULL, &e), KC_OK);
    kc_ctx_free(ctx);
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_DestroyObject", "CKR_DEVICE_ERROR", 1, 1, &e), KC_OK);
    ctx = ctx_new();
    tok = doc_token(ctx);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "one");
    CU_ASSERT_EQUAL(doc_put(tok, DOC, 2, "two", &ref, &e), KC_OK);
    kc_p11_fault_disarm();
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "two");
    CU_ASSERT_FALSE(ref.unrecorded);
    kc_ctx_free(ctx);
    /* the same failed reply where another writer did win: its candidate is
     * there, so this one lost, and says so */
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_DestroyObject", "CKR_DEVICE_ERROR", 2, 1, &e), KC_OK);
    ctx = ctx_new();
    tok = doc_token(ctx);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "two");
    doc_plant(tok, 3, "winner", &ref);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, ref.handle, &e), KC_OK); /* call 1: its commit */
    CU_ASSERT_EQUAL(doc_put(tok, DOC, 3, "loser", &ref, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "nothing was written");
    kc_p11_fault_disarm();
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "winner");
    kc_ctx_free(ctx);
}

/* 'policy apply' tidies while other hosts may write: a writer's candidate
 * made before its commit stays, so that its commit leaves a document; what
 * it can no longer need goes. 'vault validate --repair' (all) takes the
 * rest. */
static void test_docs_tidy_beside_a_writer(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref, one;
    size_t removed = 0, stale = 0;
    kc_error e;

    tok = docs_with_one(&ctx, &ref);
    one = ref;
    /* a loser of generation 1 left behind: that can go */
    doc_plant(tok, 1, "loser", NULL);
    /* a writer over it, between its candidate and its commit */
    doc_plant(tok, 2, "pending", &ref);
    CU_ASSERT_EQUAL(kc_gendoc_stale(tok, DOC, KC_WHERE_PUBLIC, doc_check, NULL, 0, &stale, &e),
                    KC_OK);
    CU_ASSERT_EQUAL(stale, 1);
    CU_ASSERT_EQUAL(kc_gendoc_tidy(tok, DOC, KC_WHERE_PUBLIC, doc_check, NULL, 0, &removed, &e),
                    KC_OK);
    CU_ASSERT_EQUAL(removed, 1);
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 2);
    /* its commit: the document is its candidate */
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, one.handle, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "pending");
    /* not recorded yet (its writer is about to): nothing is judged stale */
    doc_plant(tok, 2, "other", &one);
    CU_ASSERT_EQUAL(kc_gendoc_tidy(tok, DOC, KC_WHERE_PUBLIC, doc_check, NULL, 0, &removed, &e),
                    KC_OK);
    CU_ASSERT_EQUAL(removed, 0);
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 2);
    /* a repair keeps what readers take and removes the rest */
    CU_ASSERT_EQUAL(kc_gendoc_tidy(tok, DOC, KC_WHERE_PUBLIC, doc_check, NULL, 1, &removed, &e),
                    KC_OK);
    CU_ASSERT(removed >= 1);
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
    kc_ctx_free(ctx);
}

/* A reader that comes between a commit and its record, while another writer
 * has made its candidate over the committed document: the current one is
 * the committed document, not the newer candidate. A write over that
 * candidate would stand on nothing: when the candidate's writer then lost
 * to a third, the third's commit was removed (test_misuse "writers on many
 * hosts": a grant reported made, lost). */
static void test_docs_candidate_over_unrecorded_commit(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref;
    kc_error e;

    tok = docs_with_one(&ctx, &ref);
    /* generation 2 committed over it, its record not yet written */
    doc_plant(tok, 2, "two", &ref);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, ref.handle, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "two");
    /* and another writer's candidate over it, before its commit */
    doc_plant(tok, 3, "candidate", &ref);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "two");
    CU_ASSERT_EQUAL(ref.generation, 2);
    CU_ASSERT_FALSE(ref.guessed);
    /* a write from that read commits over the committed document and
     * removes the candidate */
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 3, "three", &ref, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "three");
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
    CU_ASSERT_EQUAL(doc_objects(tok, DOC KC_GENDOC_COMMIT_SUFFIX), 1);
    /* a document that does not name what it is written over is refused
     * before anything is made */
    CU_ASSERT_EQUAL(
        kc_gendoc_write(tok, DOC, 0, "test document", "gen=4 four", 4, &ref, doc_check, NULL, &e),
        KC_ERR);
    ASSERT_HAS(e.msg, "does not name generation 4 and the document it is written over");
    CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
    kc_ctx_free(ctx);
}

static void doc_remove_all(kc_tok *tok, const char *label)
{
    kc_data_obj *objs = NULL;
    size_t n = 0, i;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(
        kc_tok_find_data(tok, KC_GENDOC_APPLICATION, label, KC_WHERE_PUBLIC, &objs, &n, NULL, &e),
        KC_OK);
    for (i = 0; i < n; i++)
        CU_ASSERT_EQUAL(kc_tok_destroy(tok, objs[i].handle, &e), KC_OK);
    kc_p11_data_objs_free(objs, n);
}

/* One commit of generation 2 over generation 1, with the fault seam armed
 * as given (nth 0: counting only); how many C_FindObjects calls it took. */
static unsigned doc_commit_two(unsigned nth, kc_rc *put, kc_error *e)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref;
    unsigned calls;

    ctx = ctx_new();
    tok = doc_token(ctx);
    doc_remove_all(tok, DOC);
    doc_remove_all(tok, DOC KC_GENDOC_COMMIT_SUFFIX);
    CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 1, "one", NULL, e), KC_OK);
    kc_ctx_free(ctx);
    CU_ASSERT_EQUAL_FATAL(nth == 0 ? kc_p11_fault_arm("*", "CKR_OK", 1, 0, e)
                                   : kc_p11_fault_arm("C_FindObjects", "CKR_OK", nth, 1, e),
                          KC_OK);
    ctx = ctx_new();
    tok = doc_token(ctx);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "one");
    *put = doc_put(tok, DOC, 2, "two", &ref, e);
    calls = nth == 0 ? kc_p11_fault_calls_of("C_FindObjects") : kc_p11_fault_calls();
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), *put == KC_OK ? "two" : "one");
    kc_ctx_free(ctx);
    kc_p11_fault_disarm();
    return calls;
}

/* A search that leaves out the write just committed (SoftHSM 2.6.1 under
 * parallel writers) does not make its writer say another took it over: it
 * stands (exit 0), and a rerun would apply it twice. Here the search after
 * the commit (its last but the empty one that ends it) finds nothing. */
static void test_docs_write_a_search_misses_stands(void)
{
    unsigned calls;
    kc_rc put = KC_ERR;
    kc_error e;

    docs_token_init();
    calls = doc_commit_two(0, &put, &e);
    CU_ASSERT_EQUAL_FATAL(put, KC_OK);
    CU_ASSERT_FATAL(calls >= 2);
    kc_error_clear(&e);
    (void)doc_commit_two(calls - 1, &put, &e);
    CU_ASSERT_EQUAL(put, KC_OK);
    if (put != KC_OK)
        fprintf(stderr, "\n  the write said: %s\n", e.msg);
}

/* A process that, ms milliseconds from now, makes on Docs1 the document doc
 * (NULL: none) and then the commit record record: a winner that is slow to
 * leave them. Its pid, for waitpid (exit 0 when both were made). */
static pid_t plant_later(long ms, const char *doc, const char *record)
{
    pid_t kid = fork();

    if (kid == 0) {
        struct timespec pause = {ms / 1000, (ms % 1000) * 1000L * 1000};
        kc_ctx *c;
        kc_error ke;
        kc_tok *t = NULL;
        nanosleep(&pause, NULL);
        if (kc_ctx_new(KC_SOFTHSM_MODULE, env_pin, NULL, &c, &ke) != KC_OK ||
            kc_p11_token(c->p11, "Docs1", &t, &ke) != KC_OK ||
            (doc != NULL && kc_tok_create_data(t, KC_GENDOC_APPLICATION, DOC, doc, strlen(doc),
                                               0, NULL, &ke) != KC_OK) ||
            kc_tok_create_data(t, KC_GENDOC_APPLICATION, DOC KC_GENDOC_COMMIT_SUFFIX, record,
                               strlen(record), 0, NULL, &ke) != KC_OK)
            _exit(1);
        kc_ctx_free(c);
        _exit(0);
    }
    return kid;
}

/* The record a winner leaves, written late: the reader that waited takes
 * the winner's document, not the lower digest. */
static void test_docs_reader_waits_for_the_winner(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref, one;
    kc_error e;
    const char *lower, *higher;
    char winner[160], record[160], hex[65];
    unsigned char d[32];
    pid_t kid;
    int status;

    tok = docs_with_one(&ctx, &ref);
    doc_plant(tok, 2, "x", &ref);
    doc_plant(tok, 2, "y", &ref);
    one = ref;
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, ref.handle, &e), KC_OK);
    lower = doc_get(tok, DOC, &ref); /* after the wait */
    higher = strcmp(lower, "x") == 0 ? "y" : "x";
    doc_text(winner, sizeof(winner), 2, higher, &one);
    SHA256((const unsigned char *)winner, strlen(winner), d);
    kc_hex_encode(d, sizeof(d), hex);
    snprintf(record, sizeof(record), "keycustody-commit 1 generation=2 sha256=%s", hex);
    kc_ctx_free(ctx);
    kid = plant_later(400, NULL, record);
    ctx = ctx_new();
    tok = doc_token(ctx);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), higher);
    CU_ASSERT(waitpid(kid, &status, 0) == kid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    kc_ctx_free(ctx);
}

/* A write over a document no record names waits for its record: the one a
 * search showed may be a loser whose winner the search left out. Here the
 * winner's document and record come while it waits: nothing is written.
 * With no record coming (a writer killed after its commit) it writes. */
static void test_docs_write_over_unrecorded_waits(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref, one;
    kc_error e;
    char winner[160], record[160], hex[65];
    unsigned char d[32];
    struct timespec t0, t1;
    pid_t kid;
    int status;

    tok = docs_with_one(&ctx, &ref);
    one = ref;
    doc_plant(tok, 2, "loser", &one);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, one.handle, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "loser");
    CU_ASSERT(ref.unrecorded);
    doc_text(winner, sizeof(winner), 2, "winner", &one);
    SHA256((const unsigned char *)winner, strlen(winner), d);
    kc_hex_encode(d, sizeof(d), hex);
    snprintf(record, sizeof(record), "keycustody-commit 1 generation=2 sha256=%s", hex);
    kid = plant_later(300, winner, record);
    CU_ASSERT_EQUAL(doc_put(tok, DOC, 3, "over the loser", &ref, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "nothing was written");
    CU_ASSERT(waitpid(kid, &status, 0) == kid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "winner");
    CU_ASSERT_FALSE(ref.unrecorded);
    /* committed, its writer killed before its record */
    doc_plant(tok, 3, "committed", &ref);
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(tok, ref.handle, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "committed");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CU_ASSERT_EQUAL(doc_put(tok, DOC, 4, "four", &ref, &e), KC_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CU_ASSERT(t1.tv_sec - t0.tv_sec >= 1); /* it waited */
    CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), "four");
    kc_ctx_free(ctx);
}

/* Fact: SoftHSM 2.6.1 reads every token at C_Initialize, and one whose
 * token.object another process is rewriting at that moment is not listed
 * as itself for the whole process (pkcs11-tool shows it). keycustody sees
 * fewer slots than tokens on disk and initialises the module again a moment
 * later (kc_p11.c, softhsm_all_tokens): the vault is found. */
static void test_docs_token_rewritten_at_start(void)
{
    char file[1200], *out = NULL, c = 0;
    unsigned char *saved;
    size_t len = 0;
    int ready[2], go[2], status;
    kc_ctx *ctx;
    kc_tok *tok = NULL;
    kc_error e;
    pid_t kid;

    docs_token_init();
    /* and another token, opened first: with a token open the module is not
     * initialised again when a lookup misses (kc_p11.c, reload_module) */
    {
        kc_secret *so = kc_secret_dup(getenv("TEST_SO_PIN"), strlen(getenv("TEST_SO_PIN")));
        ctx = ctx_new();
        CU_ASSERT_EQUAL_FATAL(kc_p11_free_token(ctx->p11, NULL, &tok, &e), KC_OK);
        CU_ASSERT_EQUAL_FATAL(kc_tok_init_token(tok, "Other1", so, &e), KC_OK);
        kc_secret_free(so);
        kc_ctx_free(ctx);
        tok = NULL;
    }
    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out, "grep -l Docs1 '%s'/*/token.object", kc_test_path("tokens")), 0);
    snprintf(file, sizeof(file), "%.*s", (int)strcspn(out, "\n"), out);
    saved = kc_test_read(file, &len);
    CU_ASSERT_FATAL(saved != NULL && len > 0);
    CU_ASSERT_FATAL(pipe(ready) == 0 && pipe(go) == 0);
    kid = fork();
    if (kid == 0) {
        struct timespec pause = {0, 150L * 1000 * 1000};
        int fd = open(file, O_WRONLY | O_TRUNC);
        if (fd < 0 || close(fd) != 0 || write(ready[1], "b", 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(1);
        nanosleep(&pause, NULL);
        fd = open(file, O_WRONLY | O_TRUNC);
        if (fd < 0 || write(fd, saved, len) != (ssize_t)len || close(fd) != 0)
            _exit(1);
        _exit(0);
    }
    CU_ASSERT_FATAL(kid > 0 && read(ready[0], &c, 1) == 1);
    /* the fact, as another tool sees it */
    CU_ASSERT_EQUAL(kc_test_sh(&out, "pkcs11-tool --module '%s' -L 2>&1 | grep -c 'label: *Docs1'",
                               KC_SOFTHSM_MODULE),
                    1);
    CU_ASSERT_FATAL(write(go[1], "g", 1) == 1);
    ctx = ctx_new();
    CU_ASSERT_EQUAL(kc_p11_token(ctx->p11, "Other1", &tok, &e), KC_OK);
    tok = NULL;
    if (kc_p11_token(ctx->p11, "Docs1", &tok, &e) != KC_OK)
        fprintf(stderr, "\n  token Docs1: %s\n", e.msg);
    CU_ASSERT_PTR_NOT_NULL(tok);
    kc_ctx_free(ctx);
    CU_ASSERT(waitpid(kid, &status, 0) == kid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(saved);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
}

/* Writers in other processes (on other hosts as far as the token can
 * tell: nothing else orders them), all from one generation, released at
 * once: exactly one commits, the others are told KC_CONFLICT, and the
 * document is the winner's. */
static int doc_writer(int k, int ready, int go)
{
    kc_ctx *c = NULL;
    kc_tok *t = NULL;
    kc_gendoc_ref ref;
    kc_error e;
    char payload[16], ch = 'r';
    kc_rc r;

    if (kc_ctx_new(KC_SOFTHSM_MODULE, env_pin, NULL, &c, &e) != KC_OK ||
        kc_p11_token(c->p11, "Docs1", &t, &e) != KC_OK)
        return 3;
    if (strcmp(doc_get(t, DOC, &ref), "base") != 0)
        return 3;
    if (write(ready, &ch, 1) != 1 || read(go, &ch, 1) != 0)
        return 3;
    snprintf(payload, sizeof(payload), "w%d", k);
    r = doc_put(t, DOC, ref.generation + 1, payload, &ref, &e);
    if (r != KC_OK && r != KC_CONFLICT)
        fprintf(stderr, "\n  writer %d: %s\n", k, e.msg);
    kc_ctx_free(c);
    return r == KC_OK ? 0 : r == KC_CONFLICT ? 5 : 3;
}

static void doc_race(int writers, int *won, int *lost, int *winner)
{
    int ready[2], go[2], k, status;
    pid_t kids[8];
    char ch;

    *won = *lost = 0;
    *winner = -1;
    CU_ASSERT_FATAL(pipe(ready) == 0 && pipe(go) == 0);
    for (k = 0; k < writers; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            close(ready[0]);
            close(go[1]);
            _exit(doc_writer(k, ready[1], go[0]));
        }
    }
    close(ready[1]);
    close(go[0]);
    for (k = 0; k < writers; k++)
        CU_ASSERT(read(ready[0], &ch, 1) == 1);
    close(go[1]);
    close(ready[0]);
    for (k = 0; k < writers; k++) {
        CU_ASSERT_FATAL(waitpid(kids[k], &status, 0) == kids[k] && WIFEXITED(status));
        if (WEXITSTATUS(status) == 0) {
            (*won)++;
            *winner = k;
        }
        *lost += WEXITSTATUS(status) == 5;
    }
}

static void test_docs_parallel_writers(void)
{
    kc_ctx *ctx;
    kc_tok *tok;
    kc_gendoc_ref ref;
    kc_error e;
    char expect[16];
    int round, won, lost, winner;

    docs_token_init();
    for (round = 0; round < 12; round++) {
        ctx = ctx_new();
        tok = doc_token(ctx);
        if (round == 0) {
            CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, 1, "base", NULL, &e), KC_OK);
        } else {
            CU_ASSERT_STRING_NOT_EQUAL_FATAL(doc_get(tok, DOC, &ref), "(error)");
            CU_ASSERT_EQUAL_FATAL(doc_put(tok, DOC, ref.generation + 1, "base", &ref, &e), KC_OK);
        }
        kc_ctx_free(ctx); /* the writers start their own library */
        doc_race(4, &won, &lost, &winner);
        /* the others lose (KC_CONFLICT), or SoftHSM failed them under the
         * load before their commit */
        CU_ASSERT_EQUAL(won, 1);
        CU_ASSERT(lost >= 1);
        ctx = ctx_new();
        tok = doc_token(ctx);
        snprintf(expect, sizeof(expect), "w%d", winner);
        CU_ASSERT_STRING_EQUAL(doc_get(tok, DOC, &ref), expect);
        CU_ASSERT_EQUAL(doc_objects(tok, DOC), 1);
        kc_ctx_free(ctx);
    }
}

/* A writer commits the key state and stalls before it signs the manifest;
 * another host makes a key meanwhile (key state and manifest). The first
 * one's manifest, signed after, names that key too: readers without the PIN
 * go by the manifest, and would otherwise call the key planted. */
static void test_docs_manifest_after_another_host(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v1 = vault_new(ctx, "VaultH1"), *v2 = NULL;
    kc_key *k = key_new(v1, "First", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    char fp[KC_FINGERPRINT_HEX + 1];
    unsigned long next = 0;
    json_t *m = NULL, *keys;
    kc_error e;

    kc_key_free(k);
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultH1", &v2, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_keystate_load(v1, &e), KC_OK);
    json_object_set_new(json_object_get(kc_keystate_key(v1, "First", 0), "tags"), "owner",
                        json_string("alice"));
    CU_ASSERT_EQUAL_FATAL(kc_keystate_commit(v1, &e), KC_OK);
    k = key_new(v2, "Second", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    kc_key_free(k);
    CU_ASSERT_EQUAL(kc_keystate_sign(v1, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_manifest_read(v1->tok, NULL, &m, fp, &next, NULL, &e), KC_OK);
    keys = json_object_get(m, "keys");
    CU_ASSERT_PTR_NOT_NULL(json_object_get(keys, "First"));
    CU_ASSERT_PTR_NOT_NULL(json_object_get(keys, "Second"));
    json_decref(m);
    kc_vault_free(v2);
    kc_vault_free(v1);
    kc_ctx_free(ctx);
}

/* Of two candidates of one generation, the one a command loaded and the one
 * committed can differ (a search under parallel writers left the committed
 * one out). The command's write must not go over the committed one: that
 * would drop its change. Made here by committing the other candidate after
 * the load, as a writer that read the same generation would. */
static void test_docs_load_and_commit_read_one_document(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *v1 = vault_new(ctx, "VaultH2"), *v2 = NULL;
    kc_key *k = key_new(v1, "First", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    kc_gendoc_ref ref;
    unsigned char *buf = NULL;
    size_t len = 0;
    unsigned long next = 0;
    char *other, record[160], digest[KC_FINGERPRINT_HEX + 1];
    json_t *doc;
    kc_error e;

    kc_key_free(k);
    CU_ASSERT_EQUAL_FATAL(kc_keystate_load(v1, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_gendoc_read(v1->tok, KC_KEYSTATE_LABEL, KC_WHERE_PRIVATE, "key state",
                                         kc_keystate_doc_check, NULL, &buf, &len, &next, &ref, &e),
                          KC_OK);
    /* the other candidate of that generation: same base, another change */
    doc = json_loadb((const char *)buf, len, 0, NULL);
    free(buf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    json_object_set_new(
        json_object_get(json_object_get(json_object_get(doc, "keys"), "First"), "tags"), "from",
        json_string("the other writer"));
    other = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(other);
    CU_ASSERT_EQUAL_FATAL(kc_tok_create_data(v1->tok, KC_GENDOC_APPLICATION, KC_KEYSTATE_LABEL,
                                             other, strlen(other), 1, NULL, &e),
                          KC_OK);
    /* committed: the loaded one destroyed, the other's record left */
    CU_ASSERT_EQUAL_FATAL(kc_tok_destroy(v1->tok, ref.handle, &e), KC_OK);
    kc_manifest_digest(other, digest);
    snprintf(record, sizeof(record), "keycustody-commit 1 generation=%lu sha256=%s", ref.generation,
             digest);
    CU_ASSERT_EQUAL_FATAL(kc_tok_create_data(v1->tok, KC_GENDOC_APPLICATION,
                                             KC_KEYSTATE_LABEL KC_GENDOC_COMMIT_SUFFIX, record,
                                             strlen(record), 1, NULL, &e),
                          KC_OK);
    free(other);
    /* this command's change, from what it loaded, is refused */
    json_object_set_new(json_object_get(kc_keystate_key(v1, "First", 0), "tags"), "owner",
                        json_string("alice"));
    CU_ASSERT_EQUAL(kc_keystate_commit(v1, &e), KC_CONFLICT);
    ASSERT_HAS(e.msg, "is not the one this command read");
    ASSERT_HAS(e.msg, "nothing was written");
    /* and the committed change is what a fresh reader sees */
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultH2", &v2, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_keystate_load(v2, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
                               json_object_get(kc_keystate_key(v2, "First", 0), "tags"), "from")),
                           "the other writer");
    CU_ASSERT_PTR_NULL(
        json_object_get(json_object_get(kc_keystate_key(v2, "First", 0), "tags"), "owner"));
    /* a command that loads afresh writes over it */
    json_object_set_new(json_object_get(kc_keystate_key(v2, "First", 0), "tags"), "owner",
                        json_string("alice"));
    CU_ASSERT_EQUAL(kc_keystate_commit(v2, &e), KC_OK);
    kc_vault_free(v2);
    kc_vault_free(v1);
    kc_ctx_free(ctx);
}

/* A command checks the same document several times (read, write, read
 * again), and a check's answer is kept by the document's bytes
 * (kc_gendoc_memo_get). Kept for the bytes and the signer alone: another
 * vault's key must not find a manifest good because this one's did, and
 * changed bytes are checked afresh. */
static void test_docs_checks_kept_by_bytes_and_signer(void)
{
    kc_ctx *ctx = ctx_new();
    kc_vault *a = vault_new(ctx, "VaultH3"), *b = vault_new(ctx, "VaultH4");
    kc_key *k = key_new(a, "First", KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL);
    char fa[KC_FINGERPRINT_HEX + 1], fb[KC_FINGERPRINT_HEX + 1], base[KC_GENDOC_DIGEST_HEX + 1];
    unsigned char *buf = NULL, *ks = NULL;
    size_t len = 0, kslen = 0;
    unsigned long next = 0, g = 0;
    void *pa = NULL, *pb = NULL;
    kc_gendoc_ref ref;
    char *sig;
    kc_error e;

    kc_key_free(k);
    CU_ASSERT_EQUAL_FATAL(kc_manifest_signer(a->tok, &pa, fa, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_manifest_signer(b->tok, &pb, fb, &e), KC_OK);
    CU_ASSERT_STRING_NOT_EQUAL(fa, fb);
    CU_ASSERT_EQUAL_FATAL(kc_gendoc_read(a->tok, KC_VAULT_META_LABEL, KC_WHERE_PUBLIC,
                                         "vault manifest", kc_manifest_doc_check, pa, &buf, &len,
                                         &next, &ref, &e),
                          KC_OK);
    /* checked, and so kept, under a's key: the same answer again */
    CU_ASSERT_EQUAL(kc_manifest_doc_check(buf, len, &g, base, pa, &e), KC_OK);
    CU_ASSERT_EQUAL(g, ref.generation);
    /* not under b's: a's manifest put on b's token is not b's */
    kc_error_clear(&e);
    CU_ASSERT_EQUAL(kc_manifest_doc_check(buf, len, &g, base, pb, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "does not verify under the vault key");
    /* and a signature changed by one character is checked afresh */
    sig = strstr((char *)buf, "\"sig\":\"");
    CU_ASSERT_PTR_NOT_NULL_FATAL(sig);
    sig[7] = sig[7] == 'A' ? 'B' : 'A';
    kc_error_clear(&e);
    CU_ASSERT_EQUAL(kc_manifest_doc_check(buf, len, &g, base, pa, &e), KC_INTEGRITY);
    /* the key state: kept by its bytes; a copy cut short is no key state */
    CU_ASSERT_EQUAL_FATAL(kc_gendoc_read(a->tok, KC_KEYSTATE_LABEL, KC_WHERE_PRIVATE, "key state",
                                         kc_keystate_doc_check, NULL, &ks, &kslen, &next, &ref,
                                         &e),
                          KC_OK);
    CU_ASSERT_EQUAL(kc_keystate_doc_check(ks, kslen, &g, base, NULL, &e), KC_OK);
    CU_ASSERT_EQUAL(g, ref.generation);
    kc_error_clear(&e);
    CU_ASSERT_EQUAL(kc_keystate_doc_check(ks, kslen - 1, &g, base, NULL, &e), KC_INTEGRITY);
    free(buf);
    free(ks);
    kc_manifest_signer_free(pa);
    kc_manifest_signer_free(pb);
    kc_vault_free(b);
    kc_vault_free(a);
    kc_ctx_free(ctx);
}

static const kc_test_case doc_cases[] = {
    {"a manifest signed after another host's key", test_docs_manifest_after_another_host},
    {"fact: of two destroys one wins", fact_destroy_race},
    {"second writer of a generation loses", test_docs_second_writer_loses},
    {"killed writers", test_docs_killed_writers},
    {"a candidate over an unrecorded commit", test_docs_candidate_over_unrecorded_commit},
    {"a load and its commit read one document", test_docs_load_and_commit_read_one_document},
    {"checks kept by bytes and signer", test_docs_checks_kept_by_bytes_and_signer},
    {"a write a search misses stands", test_docs_write_a_search_misses_stands},
    {"tidy beside a writer", test_docs_tidy_beside_a_writer},
    {"a commit whose reply was lost", test_docs_commit_reply_lost},
    {"reader waits for the winner", test_docs_reader_waits_for_the_winner},
    {"a write over an unrecorded one waits", test_docs_write_over_unrecorded_waits},
    {"a token rewritten while the module starts", test_docs_token_rewritten_at_start},
    {"parallel writers", test_docs_parallel_writers},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"facts", 1, fact_cases}, {"vault", 1, vault_cases}, {"keys", 1, key_cases},
    {"wrap", 1, wrap_cases},  {"docs", 1, doc_cases},    {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    return kc_test_main(argc, argv, suites);
}
