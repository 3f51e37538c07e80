import random

Q = 1234567891011
x = 25

def encrypt(x):
    share_a = random.randint(-Q, Q)
    share_b = random.randint(-Q, Q)
    share_c = (x - share_a - share_b) % Q
    return (share_a, share_b, share_c)

print(encrypt(x))

def decrypt(*shares):
        return sum(shares) % Q
    
a, b, c = encrypt(x)
d = decrypt(a, b, c)
print(d)

print(decrypt(a, b))

x = encrypt(25)
y = encrypt(5)

def add(x, y):
    z = list()
    # 第一个工作机将其共享分片相加
    z.append((x[0] + y[0]) % Q)
    
    # 第二个工作机将其共享分片相加
    z.append((x[1] + y[1]) % Q)
    
    # 第三个工作机将其共享分片相加
    z.append((x[2] + y[2]) % Q)
    
    return z

print(decrypt(*add(x,y)))
