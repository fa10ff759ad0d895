//! TX checksum offload off (`ethtool -K IF tx off`) through the SIOCETHTOOL ioctl: on the
//! netdev datapath TCP stalls on veths otherwise (docs/design.md, Network datapath).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

pub fn tx_checksum_off(ifname: &str) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} must be 1..=15 bytes"),
        ));
    }
    // SAFETY: socket(2) takes only integer arguments; its result is checked just below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value as *mut EthtoolValue as *mut libc::c_void,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: req and value outlive the call; the kernel reads `value` through `data`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut req as *mut IfReq) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
