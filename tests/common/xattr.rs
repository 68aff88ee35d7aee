//! xattr system calls through libc (std has none), for the mount tests.

use super::{cstr, cvt};
use std::path::Path;

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> std::io::Result<()> {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings and a valid buffer of value.len() bytes.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn getxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    // Size query first (exercises the size-0 protocol), then the real read.
    // SAFETY: a null buffer with size 0 is the documented size query.
    let size = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buf is valid for buf.len() bytes.
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> std::io::Result<Vec<String>> {
    let p = cstr(p);
    // SAFETY: a null buffer with size 0 is the documented size query.
    let size = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buf is valid for buf.len() bytes.
    let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

pub fn removexattr(p: &Path, name: &str) -> std::io::Result<()> {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}
