//! Writes natter's synthetic camera (the moving test pattern natter-cli sends) as a Y4M
//! file, so a browser's fake camera (`--use-file-for-fake-video-capture`) sends the same
//! picture as natter's sender: `scripts/bwe-eval` compares the two on one source.

use std::io::Write;

use natter_media::video::pattern::{Stamp, TestPattern};

fn usage() -> ! {
    eprintln!(
        "usage: natter-pattern-y4m FILE [WIDTHxHEIGHT] [FRAMES] [FPS]\n\
         Writes FRAMES (default 300) frames of natter's test pattern at WIDTHxHEIGHT \
         (default 640x360) and FPS (default 30) to FILE as YUV4MPEG2 (I420). A browser \
         loops the file; each frame is width*height*3/2 bytes."
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() > 4 || args[0].starts_with('-') {
        usage();
    }
    let size = args.get(1).map_or("640x360", String::as_str);
    let Some((w, h)) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
    else {
        usage()
    };
    let frames: u32 = args
        .get(2)
        .map_or(Some(300), |f| f.parse().ok())
        .unwrap_or_else(|| usage());
    let fps: u32 = args
        .get(3)
        .map_or(Some(30), |f| f.parse().ok())
        .unwrap_or_else(|| usage());
    if frames == 0 || fps == 0 || frames > 10_000 {
        eprintln!("natter-pattern-y4m: FRAMES must be 1..=10000 and FPS at least 1");
        std::process::exit(2);
    }
    if let Err(e) = write(&args[0], w, h, frames, fps) {
        eprintln!("natter-pattern-y4m: {e}");
        std::process::exit(1);
    }
}

fn write(path: &str, w: u32, h: u32, frames: u32, fps: u32) -> Result<(), String> {
    let mut pattern = TestPattern::new(w, h)?;
    let file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| format!("{path}: {e}");
    writeln!(out, "YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg").map_err(io)?;
    for frame in 0..frames {
        let capture_ms = frame * 1000 / fps;
        writeln!(out, "FRAME").map_err(io)?;
        out.write_all(pattern.draw(Stamp { frame, capture_ms }))
            .map_err(io)?;
    }
    out.flush().map_err(io)
}
