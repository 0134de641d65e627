//! Starting a shard: an OS thread, pinned to its core, running its own compio runtime.
//!
//! The core list is read before anything is pinned (a spawned thread inherits its parent's
//! mask, so pinning the main thread first would shrink what later threads could see).

use std::future::Future;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use compio::driver::ProactorBuilder;
use compio::runtime::RuntimeBuilder;

use super::ShardId;

/// How a shard's thread and io_uring are set up.
#[derive(Debug, Clone)]
pub struct ShardThreadConfig {
    /// Shard index (names the thread).
    pub id: ShardId,
    /// CPU to pin to, or `None` to leave the thread unpinned.
    pub core: Option<usize>,
    /// Submission queue entries.
    pub uring_entries: u32,
    /// Kernel-side submission polling (`IORING_SETUP_SQPOLL`), with this idle time.
    pub sqpoll_idle: Option<Duration>,
}

/// Keeps the kernel's io-wq workers of this shard's ring on the shard's core.
///
/// Buffered file writes that cannot complete inline are punted by io_uring to io-wq worker
/// threads, which by default may run on any core: on a machine where every core runs a
/// shard they would preempt another shard. `IORING_REGISTER_IOWQ_AFF` (Linux 5.14) confines
/// them to the core whose shard submitted the work.
fn bind_io_workers(runtime: &compio::runtime::Runtime, core: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const IORING_REGISTER_IOWQ_AFF: libc::c_uint = 17;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it for any
    // core id below CPU_SETSIZE, which we check.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if core >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::other("core id beyond CPU_SETSIZE"));
        }
        libc::CPU_SET(core, &mut set);
        set
    };
    // SAFETY: the ring fd is valid for the runtime's lifetime; the kernel reads
    // `size_of::<cpu_set_t>()` bytes from `set`, which lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            runtime.as_raw_fd(),
            IORING_REGISTER_IOWQ_AFF,
            &set as *const libc::cpu_set_t,
            std::mem::size_of::<libc::cpu_set_t>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Spawns the shard thread and runs `main` to completion on its runtime.
///
/// `main` is built on the new thread (it may capture `Send` values only, and create
/// `!Send` state such as `Rc`s inside). The thread's result is an error if its io_uring
/// could not be set up.
pub fn spawn_shard<F, Fut, T>(
    config: ShardThreadConfig,
    main: F,
) -> io::Result<JoinHandle<io::Result<T>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("shard-{}", config.id))
        .spawn(move || {
            if let Some(core) = config.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    tracing::warn!(shard = config.id, core, "could not pin shard thread");
                }
            }
            let mut proactor = ProactorBuilder::new();
            proactor.capacity(config.uring_entries);
            match config.sqpoll_idle {
                Some(idle) => {
                    proactor.sqpoll_idle(idle);
                    if let Some(core) = config.core {
                        proactor.sqpoll_cpu(core as u32);
                    }
                }
                None => {
                    // One thread submits to this ring and runs its completions: let the
                    // kernel skip the cross-thread task-work interrupts (needs 5.19/6.0).
                    proactor
                        .coop_taskrun(true)
                        .taskrun_flag(true)
                        .single_issuer(true);
                }
            }
            let runtime = RuntimeBuilder::new().with_proactor(proactor).build()?;
            if let Some(core) = config.core {
                if let Err(e) = bind_io_workers(&runtime, core) {
                    tracing::warn!(shard = config.id, core, "cannot bind io-wq workers: {e}");
                }
            }
            Ok(runtime.block_on(main()))
        })
}
