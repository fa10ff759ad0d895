//! The few rtnetlink requests netplugin needs (create a veth pair, set a link up, delete a
//! link), synchronous, on a NETLINK_ROUTE socket with a receive timeout. Written out here
//! rather than pulling an async netlink stack for four messages.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const IFF_UP: u32 = 0x1;

/// Bound on waiting for the kernel's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sequence numbers of requests, so an answer is matched to its request.
fn next_seq() -> u32 {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Msg {
    buf: Vec<u8>,
    /// Offsets of open nested attributes.
    nests: Vec<usize>,
}

impl Msg {
    fn new(typ: u16, flags: u16, index: i32, ifi_flags: u32, ifi_change: u32) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish
        buf.extend_from_slice(&typ.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&next_seq().to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid
        let mut m = Msg {
            buf,
            nests: Vec::new(),
        };
        m.ifinfo(index, ifi_flags, ifi_change);
        m
    }

    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) {
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes()); // type
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, typ: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&typ.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
    }

    fn attr_str(&mut self, typ: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(typ, &data);
    }

    fn begin(&mut self, typ: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(typ | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        let start = self.nests.pop().expect("balanced nests");
        self.align();
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes only integer arguments; its result is checked just below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a live `timeval` on this stack and the length passed is its size; the
    // kernel copies it during the call and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one request and waits for its ack; a kernel error comes back as `io::Error`.
fn request(msg: Vec<u8>) -> io::Result<()> {
    let fd = socket()?;
    // SAFETY: `sockaddr_nl` is a plain C struct of integers; all-zero is a valid value (and
    // the kernel's address: pid 0, no groups).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `addr` are alive for the call and the lengths passed are exactly
    // theirs; sendto only reads them.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let seq = u32::from_ne_bytes(msg[8..12].try_into().expect("a header is 16 bytes"));
    let mut buf = vec![0u8; 16384];
    loop {
        // SAFETY: `sockaddr_nl` is a plain C struct of integers; all-zero is a valid value.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf` is an exclusively borrowed, initialised buffer of `buf.len()` bytes; the
        // kernel writes at most that many and `n` is checked before slicing. `from` and
        // `from_len` are live and describe `from`'s size exactly.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel (netlink) within 5 s",
                ));
            }
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Only the kernel (port id 0) answers requests; anything else is not ours to believe.
        if from.nl_pid != 0 {
            continue;
        }
        if let Some(outcome) = ack_for(&buf[..n as usize], seq)? {
            return outcome;
        }
    }
}

/// The kernel's acknowledgement of request `seq` in one datagram, if it holds one:
/// `Some(Ok)` for success, `Some(Err)` for the kernel's error. Messages for other sequence
/// numbers are skipped (a stale answer must not stand for this request's); a malformed
/// datagram is an error.
fn ack_for(data: &[u8], seq: u32) -> io::Result<Option<io::Result<()>>> {
    let mut off = 0;
    while off + 16 <= data.len() {
        let word = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        let len = word(off) as usize;
        let typ = u16::from_ne_bytes(data[off + 4..off + 6].try_into().expect("2 bytes"));
        if len < 16 || off + len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink answer",
            ));
        }
        if typ == NLMSG_ERROR && len >= 20 && word(off + 8) == seq {
            let code = word(off + 16) as i32;
            // A kernel error is a negative errno; anything else (i32::MIN cannot even be
            // negated) is not an answer the kernel gives.
            return match code {
                0 => Ok(Some(Ok(()))),
                c if c < 0 && c > -4096 => Ok(Some(Err(io::Error::from_raw_os_error(-c)))),
                c => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("netlink answer with error code {c}"),
                )),
            };
        }
        off += (len + 3) & !3;
    }
    Ok(None)
}

/// The interface index of `name`, or `None` when there is no such link here.
pub fn index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

pub fn exists(name: &str) -> bool {
    index(name).is_some()
}

/// Creates `host` ⟷ `peer` with `mtu` on both and `peer_mac` on the peer.
pub fn create_veth(host: &str, peer: &str, mtu: u32, peer_mac: &[u8; 6]) -> io::Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0, 0, 0);
    m.attr_str(IFLA_IFNAME, host);
    m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    m.begin(IFLA_LINKINFO);
    m.attr_str(IFLA_INFO_KIND, "veth");
    m.begin(IFLA_INFO_DATA);
    m.begin(VETH_INFO_PEER);
    m.ifinfo(0, 0, 0);
    m.attr_str(IFLA_IFNAME, peer);
    m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    m.attr(IFLA_ADDRESS, peer_mac);
    m.end();
    m.end();
    m.end();
    request(m.finish())
}

pub fn set_up(name: &str) -> io::Result<()> {
    let i = index(name).ok_or_else(|| no_such(name))?;
    request(Msg::new(RTM_NEWLINK, 0, i as i32, IFF_UP, IFF_UP).finish())
}

/// Deletes the link (a veth takes its peer with it, wherever it is). `Ok(false)` if absent.
pub fn delete(name: &str) -> io::Result<bool> {
    let Some(i) = index(name) else {
        return Ok(false);
    };
    match request(Msg::new(RTM_DELLINK, 0, i as i32, 0, 0).finish()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names of the links in this namespace (from /sys/class/net).
pub fn links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` is one end of a veth pair: its `iflink` is its peer's index, where other
/// devices' is their own (or their lower device's, which berth never names `vb`).
pub fn is_veth(name: &str) -> bool {
    let read = |attr: &str| {
        std::fs::read_to_string(std::path::Path::new("/sys/class/net").join(name).join(attr))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let driver = std::fs::read_link(
        std::path::Path::new("/sys/class/net")
            .join(name)
            .join("device/driver"),
    );
    // A veth has no bus device; a physical NIC renamed `vb...` does.
    driver.is_err()
        && matches!((read("ifindex"), read("iflink")), (Some(i), Some(l)) if i != l && l != 0)
}

fn no_such(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no link named {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE, 0, 0, 0);
        m.attr_str(IFLA_IFNAME, "vb1");
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        m.end();
        let b = m.finish();
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        // header 16 + ifinfomsg 16 + ifname (4+4) + linkinfo (4 + kind 4+5→12)
        assert_eq!(b.len(), 16 + 16 + 8 + 16);
        let nest_len = u16::from_ne_bytes(b[40..42].try_into().unwrap());
        assert_eq!(nest_len, 16);
        let other = Msg::new(RTM_DELLINK, 0, 0, 0, 0).finish();
        assert_ne!(
            b[8..12],
            other[8..12],
            "each request has its own sequence number"
        );
    }

    fn error_msg(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]); // the request's header, echoed
        m
    }

    /// Fuzz target: kernel answers (`fuzz/corpus/netlink-ack/`) cut, grown and garbled: an
    /// outcome or an error, never a panic or a read past the datagram.
    #[test]
    fn fuzz_netlink_answers() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut decided = 0u64;
        plugin_transport::fuzz::run(&corpus, "netlink-ack", |_, input| {
            if let Ok(Some(_)) = ack_for(input, 8) {
                decided += 1;
            }
        });
        assert!(decided > 10, "only {decided} inputs reached an answer");
    }

    #[test]
    fn only_the_answer_to_this_request_counts() {
        // A stale success for another request must not stand for this one's failure.
        let mut data = error_msg(7, 0);
        data.extend(error_msg(8, -libc::EEXIST));
        let e = ack_for(&data, 8).unwrap().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert!(ack_for(&error_msg(7, 0), 8).unwrap().is_none());
        assert!(ack_for(&error_msg(8, 0), 8).unwrap().unwrap().is_ok());
        assert!(ack_for(&error_msg(8, 0)[..30], 8).is_err(), "truncated");
    }
}
