/*
 * libkeysmith from C: NULL and garbage arguments give errors (never a
 * crash, never a written out-param), answers read back right, and eight
 * threads share one client, which also answers in a forked child (and still
 * in the parent). Run by tests/c_abi.rs:
 *
 *   abi_test SERVER_URL PUBLIC_KEY VALID_KEY REVOKED_KEY UNKNOWN_KEY CACHE_DIR CLOSED_URL
 *
 * VALID_KEY is on plan "pro" (features sso, audit-log) until 2099-01-01;
 * UNKNOWN_KEY is well-formed and never validated; CLOSED_URL has no server.
 * $ABI_TEST_ROUNDS sets the rounds each of the 8 threads runs (default 10);
 * $ABI_TEST_NO_FORK skips the fork (under valgrind).
 */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid, alarm under -std=c99 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keysmith.h"

static int checks;
static pthread_mutex_t checks_lock = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "abi_test.c:%d: FAILED: %s (last error: %s)\n", __LINE__, #cond, \
                    ks_last_error());                                                      \
            exit(1);                                                                       \
        }                                                                                  \
        pthread_mutex_lock(&checks_lock);                                                  \
        checks++;                                                                          \
        pthread_mutex_unlock(&checks_lock);                                                \
    } while (0)

#define STREQ(a, b) ((a) != NULL && strcmp((a), (b)) == 0)

static const char *server_url, *public_key, *valid_key, *revoked_key, *unknown_key, *cache_dir,
    *closed_url;

/* Not UTF-8: Latin-1 "café" and a lone continuation byte. */
static const char NOT_UTF8[] = {'c', 'a', 'f', (char)0xE9, (char)0x80, 0};

/* Out-params must be left alone on failure: they start as this. */
static int sentinel_storage;
#define SENTINEL ((void *)&sentinel_storage)

static void no_server_needed(void) {
    CHECK(ks_version() != NULL && ks_version()[0] != '\0');
    CHECK(ks_last_error() != NULL);
    for (uint32_t r = 0; r < 300; r++) {
        CHECK(ks_result_str(r) != NULL);
    }
    CHECK(STREQ(ks_result_str(0xFFFFFFFFu), "unknown ks_result"));
    CHECK(STREQ(ks_result_str(KS_OK), "success"));

    /* Keys. */
    CHECK(ks_key_check(NULL) == KS_NULL_PARAMETER);
    CHECK(strstr(ks_last_error(), "key") != NULL);
    CHECK(ks_key_check(valid_key) == KS_OK);
    CHECK(ks_key_check("") == KS_KEY_MALFORMED);
    CHECK(ks_key_check("garbage") == KS_KEY_MALFORMED);
    CHECK(ks_key_check(NOT_UTF8) == KS_KEY_MALFORMED);
    size_t huge_len = 1 << 20;
    char *huge = malloc(huge_len + 1);
    CHECK(huge != NULL);
    memset(huge, 'A', huge_len);
    huge[huge_len] = '\0';
    CHECK(ks_key_check(huge) == KS_KEY_MALFORMED);
    CHECK(ks_key_check_len(huge, huge_len) == KS_KEY_MALFORMED);
    free(huge);
    CHECK(ks_key_check_len(NULL, 5) == KS_NULL_PARAMETER);
    CHECK(ks_key_check_len(valid_key, strlen(valid_key)) == KS_OK);
    CHECK(ks_key_check_len(valid_key, 0) == KS_KEY_MALFORMED);

    char buf[KS_KEY_MAX_LEN + 1];
    size_t len = 777;
    memset(buf, '#', sizeof buf);
    CHECK(ks_key_canonicalize(valid_key, buf, 5, &len) == KS_INSUFFICIENT_SIZE);
    CHECK(buf[0] == '#' && len == 777);
    CHECK(ks_key_canonicalize("garbage", buf, sizeof buf, &len) == KS_KEY_MALFORMED);
    CHECK(buf[0] == '#' && len == 777);
    CHECK(ks_key_canonicalize(valid_key, NULL, sizeof buf, &len) == KS_NULL_PARAMETER);
    CHECK(ks_key_canonicalize(NULL, buf, sizeof buf, &len) == KS_NULL_PARAMETER);
    CHECK(ks_key_canonicalize(valid_key, buf, sizeof buf, &len) == KS_OK);
    CHECK(STREQ(buf, valid_key) && len == strlen(valid_key));

    char fp[KS_FINGERPRINT_LEN + 1];
    CHECK(ks_machine_fingerprint(NULL, fp, sizeof fp, NULL) == KS_NULL_PARAMETER);
    CHECK(ks_machine_fingerprint("app", NULL, sizeof fp, NULL) == KS_NULL_PARAMETER);
    CHECK(ks_machine_fingerprint("", fp, sizeof fp, NULL) == KS_INVALID_ARGUMENT);
    CHECK(ks_machine_fingerprint("a/b with spaces", fp, sizeof fp, NULL) == KS_INVALID_ARGUMENT);
    ks_result fr = ks_machine_fingerprint("app", fp, sizeof fp, &len);
    CHECK(fr == KS_OK || fr == KS_NO_MACHINE_ID);
    if (fr == KS_OK) {
        CHECK(len == KS_FINGERPRINT_LEN && strlen(fp) == KS_FINGERPRINT_LEN);
        CHECK(ks_machine_fingerprint("app", fp, KS_FINGERPRINT_LEN, NULL) == KS_INSUFFICIENT_SIZE);
    }

    /* Client construction: every NULL, every bad value. */
    ks_client *client = SENTINEL;
    CHECK(ks_client_new(NULL, public_key, "app", NULL, &client) == KS_NULL_PARAMETER);
    CHECK(ks_client_new(server_url, NULL, "app", NULL, &client) == KS_NULL_PARAMETER);
    CHECK(ks_client_new(server_url, public_key, NULL, NULL, &client) == KS_NULL_PARAMETER);
    CHECK(ks_client_new(server_url, public_key, "app", NULL, NULL) == KS_NULL_PARAMETER);
    CHECK(ks_client_new(server_url, "not base64!", "app", cache_dir, &client) ==
          KS_INVALID_PUBLIC_KEY);
    CHECK(strlen(ks_last_error()) > 0);
    CHECK(ks_client_new(server_url, "", "app", cache_dir, &client) == KS_INVALID_PUBLIC_KEY);
    CHECK(ks_client_new(server_url, "AAAA", "app", cache_dir, &client) == KS_INVALID_PUBLIC_KEY);
    CHECK(ks_client_new("ftp://example.com", public_key, "app", cache_dir, &client) ==
          KS_INVALID_CONFIG);
    CHECK(ks_client_new("not a url", public_key, "app", cache_dir, &client) == KS_INVALID_CONFIG);
    CHECK(ks_client_new("", public_key, "app", cache_dir, &client) == KS_INVALID_CONFIG);
    CHECK(ks_client_new(server_url, public_key, "", cache_dir, &client) == KS_INVALID_CONFIG);
    CHECK(ks_client_new(server_url, public_key, "app", "", &client) == KS_INVALID_CONFIG);
    CHECK(ks_client_new(server_url, public_key, "../etc", cache_dir, &client) ==
          KS_INVALID_CONFIG);
    CHECK(ks_client_new(NOT_UTF8, public_key, "app", cache_dir, &client) == KS_INVALID_ARGUMENT);
    CHECK(ks_client_new(server_url, public_key, "app", NOT_UTF8, &client) ==
          KS_INVALID_ARGUMENT);
    CHECK(client == SENTINEL);

    ks_client_options *options = SENTINEL;
    CHECK(ks_client_options_new(NULL) == KS_NULL_PARAMETER);
    CHECK(ks_client_options_set_timeout_ms(NULL, 5) == KS_NULL_PARAMETER);
    CHECK(ks_client_options_set_offline_grace_secs(NULL, 5) == KS_NULL_PARAMETER);
    CHECK(ks_client_options_set_user_agent(NULL, "x") == KS_NULL_PARAMETER);
    CHECK(ks_client_options_set_key_prefix(NULL, "KS") == KS_NULL_PARAMETER);
    CHECK(ks_client_options_new(&options) == KS_OK && options != SENTINEL && options != NULL);
    CHECK(ks_client_options_set_timeout_ms(options, 0) == KS_INVALID_ARGUMENT);
    CHECK(ks_client_options_set_user_agent(options, NULL) == KS_NULL_PARAMETER);
    CHECK(ks_client_options_set_user_agent(options, NOT_UTF8) == KS_INVALID_ARGUMENT);
    /* Refused when set, not later by ks_client_new_with_options. */
    CHECK(ks_client_options_set_key_prefix(options, "bad prefix!") == KS_INVALID_ARGUMENT);
    CHECK(strstr(ks_last_error(), "prefix") != NULL);
    CHECK(ks_client_options_set_user_agent(options, "two\nlines") == KS_INVALID_ARGUMENT);
    CHECK(ks_client_new_with_options("ftp://x", public_key, "app", cache_dir, options, &client) ==
          KS_INVALID_CONFIG);
    CHECK(client == SENTINEL);
    ks_client_options_free(options);

    /* Everything that takes an object, given NULL. */
    ks_validation *answer = SENTINEL;
    CHECK(ks_client_validate(NULL, valid_key, NULL, NULL, &answer) == KS_NULL_PARAMETER);
    CHECK(ks_client_validate_offline(NULL, valid_key, NULL, NULL, &answer) == KS_NULL_PARAMETER);
    CHECK(answer == SENTINEL);
    CHECK(!ks_validation_valid(NULL));
    CHECK(ks_validation_code(NULL) == NULL);
    CHECK(ks_validation_source(NULL) == NULL);
    CHECK(ks_validation_message(NULL) == NULL);
    CHECK(ks_validation_plan(NULL) == NULL);
    CHECK(ks_validation_expires_at(NULL) == -1);
    CHECK(ks_validation_offline_until(NULL) == -1);
    CHECK(!ks_validation_has_feature(NULL, "sso"));
    CHECK(ks_validation_features_len(NULL) == 0);
    CHECK(ks_validation_feature(NULL, 0) == NULL);
    ks_validation_free(NULL);
    ks_client_free(NULL);
    ks_client_options_free(NULL);
}

static ks_client *new_client(const char *url) {
    ks_client_options *options = NULL;
    CHECK(ks_client_options_new(&options) == KS_OK);
    CHECK(ks_client_options_set_timeout_ms(options, 20000) == KS_OK);
    CHECK(ks_client_options_set_user_agent(options, "abi-test/1.0") == KS_OK);
    ks_client *client = NULL;
    CHECK(ks_client_new_with_options(url, public_key, "abi-test", cache_dir, options, &client) ==
          KS_OK);
    CHECK(client != NULL);
    ks_client_options_free(options); /* the client does not keep it */
    return client;
}

/* Validates and checks the code; returns the answer for more checks. */
static ks_validation *expect(const ks_client *client, const char *key, const char *code,
                             const char *source) {
    ks_validation *answer = NULL;
    CHECK(ks_client_validate(client, key, NULL, NULL, &answer) == KS_OK);
    CHECK(answer != NULL);
    if (!STREQ(ks_validation_code(answer), code) || !STREQ(ks_validation_source(answer), source)) {
        fprintf(stderr, "expected %s (%s), got %s (%s)\n", code, source,
                ks_validation_code(answer), ks_validation_source(answer));
    }
    CHECK(STREQ(ks_validation_code(answer), code));
    CHECK(STREQ(ks_validation_source(answer), source));
    CHECK(ks_validation_valid(answer) == STREQ(code, "VALID"));
    CHECK(ks_validation_message(answer) != NULL && ks_validation_message(answer)[0] != '\0');
    return answer;
}

static void answers(const ks_client *client) {
    ks_validation *answer = expect(client, valid_key, "VALID", "online");
    CHECK(STREQ(ks_validation_plan(answer), "pro"));
    CHECK(ks_validation_expires_at(answer) == 4070908800LL); /* 2099-01-01T00:00:00Z */
    CHECK(ks_validation_offline_until(answer) > 0);
    CHECK(ks_validation_has_feature(answer, "sso"));
    CHECK(ks_validation_has_feature(answer, "audit-log"));
    CHECK(!ks_validation_has_feature(answer, "warp-drive"));
    CHECK(!ks_validation_has_feature(answer, NULL));
    CHECK(!ks_validation_has_feature(answer, NOT_UTF8));
    CHECK(ks_validation_features_len(answer) == 2);
    CHECK(ks_validation_feature(answer, 0) != NULL && ks_validation_feature(answer, 1) != NULL);
    CHECK(ks_validation_feature(answer, 2) == NULL);
    CHECK(ks_validation_feature(answer, (size_t)-1) == NULL);
    ks_validation_free(answer);

    /* A typo is an answer, decided locally. So is a key that is not text. */
    char typo[64];
    snprintf(typo, sizeof typo, "%s", valid_key);
    typo[strlen(typo) - 1] = typo[strlen(typo) - 1] == 'A' ? 'B' : 'A';
    answer = expect(client, typo, "KEY_MALFORMED", "local");
    CHECK(ks_validation_plan(answer) == NULL);
    CHECK(ks_validation_expires_at(answer) == -1);
    CHECK(ks_validation_offline_until(answer) == -1);
    CHECK(ks_validation_features_len(answer) == 0);
    ks_validation_free(answer);
    ks_validation_free(expect(client, NOT_UTF8, "KEY_MALFORMED", "local"));
    ks_validation_free(expect(client, "", "KEY_MALFORMED", "local"));

    answer = expect(client, revoked_key, "LICENSE_REVOKED", "online");
    CHECK(STREQ(ks_validation_plan(answer), "pro"));
    CHECK(ks_validation_features_len(answer) == 2);
    CHECK(!ks_validation_has_feature(answer, "sso")); /* never granted when not valid */
    ks_validation_free(answer);

    /* Bad arguments are not answers: an error, and *out left alone. */
    answer = SENTINEL;
    CHECK(ks_client_validate(client, NULL, NULL, NULL, &answer) == KS_NULL_PARAMETER);
    CHECK(ks_client_validate(client, valid_key, NULL, NULL, NULL) == KS_NULL_PARAMETER);
    CHECK(ks_client_validate(client, valid_key, "not a host name!", NULL, &answer) ==
          KS_INVALID_ARGUMENT);
    CHECK(ks_client_validate(client, valid_key, NOT_UTF8, NULL, &answer) == KS_INVALID_ARGUMENT);
    CHECK(ks_client_validate(client, valid_key, NULL, "has spaces", &answer) ==
          KS_INVALID_ARGUMENT);
    CHECK(ks_client_validate(client, valid_key, NULL, NOT_UTF8, &answer) == KS_INVALID_ARGUMENT);
    CHECK(answer == SENTINEL);

    /* A domain seat: the domain is normalised; the answer is signed for it. */
    answer = NULL;
    CHECK(ks_client_validate(client, valid_key, "Shop.Example.COM.", "machine-1", &answer) ==
          KS_OK);
    CHECK(ks_validation_valid(answer));
    ks_validation_free(answer);
}

/* An app moving to a new machine frees its seat; its cached answer goes too. */
static void seats(const ks_client *client) {
    ks_validation *answer = NULL;
    CHECK(ks_client_validate(client, valid_key, NULL, "moving-machine", &answer) == KS_OK);
    CHECK(ks_validation_valid(answer));
    ks_validation_free(answer);
    bool domain_freed = true, machine_freed = false;
    CHECK(ks_client_deactivate(client, valid_key, NULL, "moving-machine", &domain_freed,
                               &machine_freed) == KS_OK);
    CHECK(!domain_freed && machine_freed);
    answer = SENTINEL;
    CHECK(ks_client_validate_offline(client, valid_key, NULL, "moving-machine", &answer) ==
          KS_NO_CACHE);
    CHECK(answer == SENTINEL);
    /* Nothing left to free is not an error; the out-params are optional. */
    CHECK(ks_client_deactivate(client, valid_key, NULL, "moving-machine", NULL, &machine_freed) ==
          KS_OK);
    CHECK(!machine_freed);
    CHECK(ks_client_deactivate(client, valid_key, NULL, "moving-machine", NULL, NULL) == KS_OK);

    CHECK(ks_client_deactivate(client, unknown_key, NULL, "m", NULL, NULL) ==
          KS_LICENSE_NOT_FOUND);
    CHECK(ks_last_error() != NULL && ks_last_error()[0] != '\0');
    CHECK(ks_client_deactivate(client, valid_key, NULL, NULL, NULL, NULL) == KS_INVALID_ARGUMENT);
    CHECK(ks_client_deactivate(client, valid_key, "not a host name!", NULL, NULL, NULL) ==
          KS_INVALID_ARGUMENT);
    CHECK(ks_client_deactivate(client, "KS-0000", NULL, "m", NULL, NULL) == KS_KEY_MALFORMED);
    CHECK(ks_client_deactivate(NULL, valid_key, NULL, "m", NULL, NULL) == KS_NULL_PARAMETER);
    CHECK(ks_client_deactivate(client, NULL, NULL, "m", NULL, NULL) == KS_NULL_PARAMETER);
}

static void offline(void) {
    /* Same cache dir, no server: the cached answers stand in. */
    ks_client *client = new_client(closed_url);
    ks_validation_free(expect(client, valid_key, "VALID", "cache"));
    ks_validation_free(expect(client, revoked_key, "LICENSE_REVOKED", "cache"));
    ks_validation *answer = SENTINEL;
    CHECK(ks_client_validate(client, unknown_key, NULL, NULL, &answer) == KS_NETWORK);
    CHECK(strstr(ks_last_error(), "cached") != NULL);
    CHECK(ks_client_validate_offline(client, unknown_key, NULL, NULL, &answer) == KS_NO_CACHE);
    CHECK(answer == SENTINEL);
    answer = NULL;
    CHECK(ks_client_validate_offline(client, valid_key, NULL, NULL, &answer) == KS_OK);
    CHECK(ks_validation_valid(answer) && STREQ(ks_validation_source(answer), "cache"));
    /* Freeing a seat needs the server: no cache stands in. */
    CHECK(ks_client_deactivate(client, valid_key, NULL, "m", NULL, NULL) == KS_NETWORK);
    /* An answer outlives its client. */
    ks_client_free(client);
    CHECK(STREQ(ks_validation_code(answer), "VALID"));
    ks_validation_free(answer);
}

#define THREADS 8

/* Rounds per thread: $ABI_TEST_ROUNDS, default 10 (fewer under valgrind). */
static int rounds = 10;

struct worker {
    const ks_client *client;
    int index;
    int valid, malformed, revoked;
};

static void *work(void *arg) {
    struct worker *w = arg;
    char typo[64];
    snprintf(typo, sizeof typo, "%s", valid_key);
    typo[strlen(typo) - 2] = typo[strlen(typo) - 2] == 'A' ? 'B' : 'A';
    for (int round = 0; round < rounds; round++) {
        const char *keys[3] = {valid_key, typo, revoked_key};
        for (int k = 0; k < 3; k++) {
            ks_validation *answer = NULL;
            CHECK(ks_client_validate(w->client, keys[k], NULL, NULL, &answer) == KS_OK);
            const char *code = ks_validation_code(answer);
            if (STREQ(code, "VALID")) {
                CHECK(ks_validation_has_feature(answer, "sso"));
                w->valid++;
            } else if (STREQ(code, "KEY_MALFORMED")) {
                w->malformed++;
            } else if (STREQ(code, "LICENSE_REVOKED")) {
                w->revoked++;
            }
            ks_validation_free(answer);
        }
        /* ks_last_error is per thread: this thread's failure, not another's. */
        char url[64];
        snprintf(url, sizeof url, "http://thread-%d.invalid/?q", w->index);
        ks_client *bad = SENTINEL;
        CHECK(ks_client_new(url, public_key, "abi-test", cache_dir, &bad) == KS_INVALID_CONFIG);
        char mine[32];
        snprintf(mine, sizeof mine, "thread-%d.", w->index);
        CHECK(strstr(ks_last_error(), mine) != NULL);
        CHECK(bad == SENTINEL);
    }
    return NULL;
}

static void threads(const ks_client *client) {
    pthread_t ids[THREADS];
    struct worker workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){.client = client, .index = i};
        CHECK(pthread_create(&ids[i], NULL, work, &workers[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(ids[i], NULL) == 0);
        CHECK(workers[i].valid == rounds);
        CHECK(workers[i].malformed == rounds);
        CHECK(workers[i].revoked == rounds);
    }
}

/* A client made before fork() answers online in the child (a worker of a
 * pre-forking server, Python's multiprocessing) — it used to block for
 * ever there, its runtime thread being the parent's — and still in the
 * parent afterwards. */
static void forked(const ks_client *client) {
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        alarm(60); /* a hang fails the test instead of stalling it */
        ks_validation *answer = NULL;
        int ok = ks_client_validate(client, valid_key, NULL, NULL, &answer) == KS_OK &&
                 ks_validation_valid(answer) && STREQ(ks_validation_source(answer), "online");
        if (!ok) {
            fprintf(stderr, "forked child: %s\n",
                    answer ? ks_validation_code(answer) : ks_last_error());
        }
        ks_validation_free(answer);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    if (!WIFEXITED(status)) {
        fprintf(stderr, "forked child did not exit (signal %d)\n",
                WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ks_validation_free(expect(client, valid_key, "VALID", "online"));
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr,
                "usage: %s SERVER_URL PUBLIC_KEY VALID_KEY REVOKED_KEY UNKNOWN_KEY CACHE_DIR "
                "CLOSED_URL\n",
                argv[0]);
        return 2;
    }
    server_url = argv[1];
    public_key = argv[2];
    valid_key = argv[3];
    revoked_key = argv[4];
    unknown_key = argv[5];
    cache_dir = argv[6];
    closed_url = argv[7];
    if (getenv("ABI_TEST_ROUNDS") != NULL && atoi(getenv("ABI_TEST_ROUNDS")) > 0) {
        rounds = atoi(getenv("ABI_TEST_ROUNDS"));
    }

    no_server_needed();
    ks_client *client = new_client(server_url);
    answers(client);
    seats(client);
    threads(client);
    if (getenv("ABI_TEST_NO_FORK") == NULL) {
        forked(client);
    }
    ks_client_free(client);
    offline();
    printf("abi_test: %d checks passed\n", checks);
    return 0;
}
