# Thin wrapper over CMake. The two commands of the README:
#   make demo    set up everything and run the main job on private SoftHSM tokens (./var/demo)
#   make check   set up everything and run every test
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= 2
WERROR     ?= OFF

.PHONY: all deps build check demo asan-check fuzz-smoke lint bench clean install deb

all: build

deps:
	@scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYCUSTODY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

check: build
	cd $(BUILD) && ctest -j$(JOBS) --output-on-failure

# make install [PREFIX=/usr/local] [DESTDIR=...]: the tool, libkeycustody.so
# with its header and keycustody.pc, the man pages and bash completion. It
# builds what is missing but installs no packages (see 'make deps').
PREFIX ?= /usr/local
install:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYCUSTODY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

demo: build
	@scripts/demo.sh $(BUILD)/keycustody

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
asan-check: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKEYCUSTODY_SANITIZE=ON \
	  -DKEYCUSTODY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest -j$(JOBS) --output-on-failure

# Each libFuzzer target for FUZZ_SECONDS on its seed corpus (clang).
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := backup domain meta ref layout item audit
fuzz-smoke: deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
	  -DKEYCUSTODY_FUZZ=ON -DKEYCUSTODY_TESTS=OFF >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus-$$t && \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s" && \
	  $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=0 \
	    $(FUZZ_BUILD)/corpus-$$t tests/fuzz/corpus/$$t 2>$(FUZZ_BUILD)/fuzz_$$t.log \
	    || { tail -40 $(FUZZ_BUILD)/fuzz_$$t.log; exit 1; }; \
	done; echo "fuzz-smoke: no crash"

# cppcheck and clang-tidy (.clang-tidy) on every C file; any finding fails.
LINT_BUILD ?= build-lint
lint: deps
	@JOBS=$(JOBS) scripts/lint.sh $(LINT_BUILD)

# The Debian packages (dpkg-buildpackage), lintian, installed and run (root).
deb: deps
	@JOBS=$(JOBS) scripts/deb-check.sh

bench: build
	$(BUILD)/bench_unwrap
	$(BUILD)/bench_data
	$(BUILD)/bench_audit
	$(BUILD)/bench_keycreate

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(LINT_BUILD) var
