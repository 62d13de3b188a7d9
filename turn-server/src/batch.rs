//! Batched datagram receive (`recvmmsg`) for the relay data path.
//!
//! A plain `recv_from` loop costs one extra system call per wake-up: the read that returns
//! `EAGAIN` and tells tokio the socket is drained. `recvmmsg` asking for [`SLOTS`] datagrams
//! that returns fewer proves the queue was empty at that instant, so readiness is cleared
//! without that extra call, and under load one call brings several datagrams.
//!
//! One receive area per thread (the receive and the handling of a batch never await), so
//! an allocation costs no receive memory of its own.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams asked for per call.
pub const SLOTS: usize = 8;
/// Bytes kept free before each datagram (room for a ChannelData header).
pub const HEADROOM: usize = 4;
/// Largest datagram received whole.
pub const SLOT_BYTES: usize = 65_536;

/// A receive area of [`SLOTS`] datagrams.
pub struct Batch {
    bufs: Vec<u8>,
    addrs: [MaybeUninit<libc::sockaddr_storage>; SLOTS],
    lens: [usize; SLOTS],
    addr_lens: [libc::socklen_t; SLOTS],
    count: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bufs: vec![0u8; SLOTS * (HEADROOM + SLOT_BYTES)],
            addrs: [MaybeUninit::zeroed(); SLOTS],
            lens: [0; SLOTS],
            addr_lens: [0; SLOTS],
            count: 0,
        }
    }

    /// How many datagrams the last receive brought.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Datagram `i` with [`HEADROOM`] writable bytes before it, and its sender.
    pub fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], usize, SocketAddr)> {
        if i >= self.count {
            return None;
        }
        // SAFETY: the kernel wrote addr_lens[i] bytes of a socket address into addrs[i]
        // (the area was zeroed, so any byte it did not write is still initialised).
        let from = unsafe { to_socket_addr(self.addrs[i].assume_init_ref(), self.addr_lens[i]) }?;
        let start = i * (HEADROOM + SLOT_BYTES);
        let n = self.lens[i];
        Some((&mut self.bufs[start..start + HEADROOM + n], n, from))
    }

    /// One non-blocking `recvmmsg`. Returns whether the queue may hold more.
    fn recv(&mut self, fd: libc::c_int) -> io::Result<bool> {
        self.count = 0;
        let mut iovs: [libc::iovec; SLOTS] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..SLOTS {
            // SAFETY: each slot lies inside `bufs`.
            iovs[i].iov_base = unsafe { base.add(i * (HEADROOM + SLOT_BYTES) + HEADROOM) }.cast();
            iovs[i].iov_len = SLOT_BYTES;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = self.addrs[i].as_mut_ptr().cast();
            msgs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every pointer in `msgs` refers to memory owned by `self` or the stack
        // arrays above, all alive for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            // A datagram larger than a slot is cut (MSG_TRUNC); treat it as absent.
            let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated { 0 } else { m.msg_len as usize };
            self.addr_lens[i] = if truncated { 0 } else { m.msg_hdr.msg_namelen };
        }
        self.count = n;
        Ok(n == SLOTS)
    }
}

/// # Safety
/// `len` bytes of `ss` must be a socket address the kernel wrote.
unsafe fn to_socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::new());
}

/// Waits until `sock` is readable, then hands every queued datagram to `each` (as
/// `(buffer with headroom, length, sender)`), in batches, until the socket is drained.
pub async fn recv_all(
    sock: &UdpSocket,
    mut each: impl FnMut(&mut [u8], usize, SocketAddr),
) -> io::Result<()> {
    sock.readable().await?;
    let fd = sock.as_raw_fd();
    BATCH.with(|cell| {
        let mut batch = cell.borrow_mut();
        // Bounded: a socket flooded without pause still yields to other tasks.
        for _ in 0..64 {
            let mut more = false;
            let r = sock.try_io(Interest::READABLE, || {
                more = batch.recv(fd)?;
                if more {
                    Ok(())
                } else {
                    // Fewer than asked for: the queue was empty, so let tokio clear readiness.
                    Err(io::ErrorKind::WouldBlock.into())
                }
            });
            for i in 0..batch.len() {
                if let Some((buf, n, from)) = batch.get_mut(i)
                    && n > 0
                {
                    each(buf, n, from);
                }
            }
            batch.count = 0;
            match r {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drains_every_queued_datagram_with_its_sender() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // More than two batches' worth, from two senders, of different sizes.
        for i in 0..(2 * SLOTS + 3) {
            let s = if i % 2 == 0 { &a } else { &b };
            s.send_to(&vec![i as u8; 1 + i * 100], to).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 2 * SLOTS + 3 {
            recv_all(&rx, |buf, n, from| {
                assert_eq!(buf.len(), HEADROOM + n);
                got.push((buf[HEADROOM..].to_vec(), from));
            })
            .await
            .unwrap();
        }
        for (i, (data, from)) in got.iter().enumerate() {
            assert_eq!(data, &vec![i as u8; 1 + i * 100]);
            let want = if i % 2 == 0 { &a } else { &b };
            assert_eq!(*from, want.local_addr().unwrap());
        }
        // Drained: readiness is cleared and a new datagram wakes the next call.
        a.send_to(b"late", to).unwrap();
        let mut late = Vec::new();
        recv_all(&rx, |buf, _, _| late.push(buf[HEADROOM..].to_vec()))
            .await
            .unwrap();
        assert_eq!(late, vec![b"late".to_vec()]);
    }

    #[tokio::test]
    async fn ipv6_senders_come_back_whole() {
        let Ok(rx) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("skipped: no IPv6 loopback on this host");
            return;
        };
        let tx = std::net::UdpSocket::bind("[::1]:0").unwrap();
        tx.send_to(b"v6", rx.local_addr().unwrap()).unwrap();
        let mut from = None;
        recv_all(&rx, |_, _, f| from = Some(f)).await.unwrap();
        assert_eq!(from, Some(tx.local_addr().unwrap()));
    }
}
