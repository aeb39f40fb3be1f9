# nooelint: oelint.var.bbclassextend - a target daemon with a systemd unit; no -native use
SUMMARY = "Edge bridge from a PBX's MQTT or AMQP call events to websocket clients"
DESCRIPTION = "callwire takes call events (Kazoo, FreeSWITCH, Asterisk) from the \
               local MQTT or AMQP broker and pushes them to websocket clients \
               (Blackhole, iSymphony, ActionCable) on one thread, with memory \
               bounded by limits set at start-up."
# nooelint: oelint.vars.homepageping - placeholder address; CI has no network to ping it
HOMEPAGE = "https://github.com/callwire/callwire"
BUGTRACKER = "https://github.com/callwire/callwire/issues"
SECTION = "net"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=643c0ed277a78af09028814bc4789e5e"
CVE_PRODUCT = "callwire"

# Source: the callwire checkout this layer sits in (the recipe is <checkout>/yocto/
# recipes-connectivity/callwire/), so a clone builds as it is and the crate list below
# always belongs to the Cargo.lock being built (CI checks that they match). externalsrc
# keeps the crate:// entries, so the crates are still fetched and checksummed. To build
# another tree, set EXTERNALSRC:pn-callwire in local.conf; to build a pinned git
# revision instead, see README.md, "Yocto".
#
# callwire-crates.inc: regenerate with yocto/gen-crates-inc or
# `bitbake -c update_crates callwire` (same output).
require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates externalsrc systemd

EXTERNALSRC ?= "${@os.path.normpath(d.getVar('FILE_DIRNAME') + '/../../..')}"
# Don't add externalsrc's oe-workdir and oe-logs symlinks to the checkout.
EXTERNALSRC_SYMLINKS = ""

# rust-common remaps ${WORKDIR} in paths compiled into the binary; the source is outside
# it here, so remap the checkout too (no build host path in panic messages or debug info).
RUST_DEBUG_REMAP:append = " --remap-path-prefix=${S}=${TARGET_DBGSRC_DIR}"

# Cargo.toml's release profile strips the binary; leave stripping to the build system so
# ${PN}-dbg gets the symbols and the already-stripped QA check passes.
export CARGO_PROFILE_RELEASE_STRIP = "false"

SYSTEMD_SERVICE:${PN} = "callwire.service"
CONFFILES:${PN} = "${sysconfdir}/callwire/callwire.env"

# The unit in systemd/ is written for a manual install to /usr/local/bin: point its
# ExecStart at ${bindir}, and fail here if the unit stops matching what is installed.
# The options file goes where the unit's EnvironmentFile= reads it, mode 0600 (it may
# hold a broker password; systemd reads it as root before starting the dynamic user).
do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/callwire
    sed -e 's|^ExecStart=[^ ]*/callwire |ExecStart=${bindir}/callwire |' \
        -e 's|^EnvironmentFile=-/etc/|EnvironmentFile=-${sysconfdir}/|' \
        ${S}/systemd/callwire.service > ${B}/callwire.service
    grep -q '^ExecStart=${bindir}/callwire ' ${B}/callwire.service ||
        bbfatal "systemd/callwire.service: no ExecStart= to point at ${bindir}/callwire"
    grep -qx 'EnvironmentFile=-${sysconfdir}/callwire/callwire.env' ${B}/callwire.service ||
        bbfatal "systemd/callwire.service: EnvironmentFile= is not ${sysconfdir}/callwire/callwire.env"
    install -m 0644 ${B}/callwire.service ${D}${systemd_system_unitdir}/callwire.service
    install -m 0600 ${S}/systemd/callwire.env ${D}${sysconfdir}/callwire/callwire.env
}
