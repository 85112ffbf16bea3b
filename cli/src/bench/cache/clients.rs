//! The caches as cache-aside sees them: shardcache through a minimal HTTP/1.1
//! client, and three memcached or redis servers holding a copy each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{bail, ensure, Context};

use super::{REFERENCE_COPIES, REQUEST_TIMEOUT};

/// A cache as cache-aside sees it.
pub(super) trait CacheClient: Send {
    /// Whether the cache holds `key`.
    fn get(&mut self, key: &str) -> anyhow::Result<bool>;
    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()>;
}

pub(super) fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A minimal HTTP/1.1 keep-alive client: enough for the master's data API and the
/// aux inventory (bodies with `content-length` or chunked).
pub(super) struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    pub(super) fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        Ok(Http {
            stream: BufReader::new(connect(addr)?),
            host: addr.to_string(),
        })
    }

    pub(super) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request)?;
        let status_line = read_line(&mut self.stream)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked) = (0, false);
        loop {
            let line = read_line(&mut self.stream)?;
            if line.is_empty() {
                break;
            }
            let (name, field) = line.split_once(':').unwrap_or((&line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = field.trim().parse()?,
                "transfer-encoding" => chunked = field.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if !chunked {
            body.resize(length, 0);
            self.stream.read_exact(&mut body)?;
            return Ok((status, body));
        }
        loop {
            let size = usize::from_str_radix(read_line(&mut self.stream)?.trim(), 16)?;
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..])?;
            read_line(&mut self.stream)?;
            if size == 0 {
                return Ok((status, body));
            }
        }
    }
}

/// One line without its CRLF; an error at end of stream.
pub(super) fn read_line(stream: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    ensure!(stream.read_line(&mut line)? > 0, "connection closed");
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// shardcache through its master.
pub(super) struct HttpCache(pub(super) Http);

impl CacheClient for HttpCache {
    fn get(&mut self, key: &str) -> anyhow::Result<bool> {
        match self.0.request("GET", &format!("/data/{key}"), b"")?.0 {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!("GET answered {status}"),
        }
    }

    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
        match self.0.request("POST", "/data", body.as_bytes())?.0 {
            200 | 201 => Ok(()),
            status => bail!("POST answered {status}"),
        }
    }
}

/// Three copies on three memcached or redis servers.
pub(super) struct Replicated {
    pub(super) connections: Vec<BufReader<TcpStream>>,
    pub(super) redis: bool,
}

impl Replicated {
    fn get_one(&mut self, copy: usize, key: &str) -> anyhow::Result<bool> {
        let (redis, connection) = (self.redis, &mut self.connections[copy]);
        let command = match redis {
            true => format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()),
            false => format!("get {key}\r\n"),
        };
        connection.get_mut().write_all(command.as_bytes())?;
        let line = read_line(connection)?;
        if redis {
            return match line.strip_prefix('$').map(str::parse::<i64>) {
                Some(Ok(-1)) => Ok(false),
                Some(Ok(len)) => {
                    skip(connection, len as usize + 2)?;
                    Ok(true)
                }
                _ => bail!("redis answered {line:?}"),
            };
        }
        if line == "END" {
            return Ok(false);
        }
        let len: usize = match line.strip_prefix("VALUE ") {
            Some(rest) => rest.rsplit(' ').next().unwrap_or("").parse()?,
            None => bail!("memcached answered {line:?}"),
        };
        skip(connection, len + 2)?;
        ensure!(
            read_line(connection)? == "END",
            "memcached: no END after a value"
        );
        Ok(true)
    }
}

pub(super) fn skip(connection: &mut impl Read, len: usize) -> anyhow::Result<()> {
    let mut buffer = vec![0; len];
    connection.read_exact(&mut buffer)?;
    Ok(())
}

impl CacheClient for Replicated {
    fn get(&mut self, key: &str) -> anyhow::Result<bool> {
        let primary = (primary_hash(key) % REFERENCE_COPIES as u64) as usize;
        for step in 0..REFERENCE_COPIES {
            if self.get_one((primary + step) % REFERENCE_COPIES, key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut command = Vec::new();
        match self.redis {
            true => crate::bench::support::encode_redis_set(
                &mut command,
                key.as_bytes(),
                value.as_bytes(),
            ),
            false => crate::bench::support::encode_memcached_set(
                &mut command,
                key.as_bytes(),
                value.as_bytes(),
            ),
        }
        for connection in &mut self.connections {
            connection.get_mut().write_all(&command)?;
        }
        for connection in &mut self.connections {
            let line = read_line(connection)?;
            ensure!(line == "+OK" || line == "STORED", "SET answered {line:?}");
        }
        Ok(())
    }
}

/// A stable hash of a key (FNV-1a) to pick its primary copy.
pub(super) fn primary_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
