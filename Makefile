# Thin wrapper over CMake. The two commands of the README:
#   make demo    set up everything and run the main job on private SoftHSM tokens (./var/demo)
#   make check   set up everything and run every test
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= 2
WERROR     ?= OFF

.PHONY: all deps build check demo asan-check bench clean

all: build

deps:
	@scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYCUSTODY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

check: build
	cd $(BUILD) && ctest -j$(JOBS) --output-on-failure

demo: build
	@scripts/demo.sh $(BUILD)/keycustody

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
asan-check: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKEYCUSTODY_SANITIZE=ON \
	  -DKEYCUSTODY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest -j$(JOBS) --output-on-failure

bench: build
	$(BUILD)/bench_unwrap

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) var
